/* Socket callbacks for ei (its "user supplied socket implementation"): plain TCP with two changes.
 *
 * 1. Timeouts wait with poll(), never select(). ei's own _tmo calls use select(), which cannot watch fds
 *    above FD_SETSIZE (1024); a front end holding 20,000 client sockets gets distribution fds far above
 *    that. Declared EI_SCLBK_FLG_FULL_IMPL, so ei leaves the timeouts to us and never flips O_NONBLOCK.
 * 2. Reads and writes are buffered in user space. ei reads each message as a 4-byte length and then the
 *    body, and writes each message with its own writev: two recv and one sendmsg per message. Here one
 *    recv fills 64 KiB of input that may hold many messages, and writes collect in an output buffer that
 *    CEI_flush sends once per batch. Output is also flushed before any wait for input, so a reply (or a
 *    tick answer) is never stuck behind a read.
 *
 * All of this runs on the one thread that owns the distribution sockets; nothing here is thread safe. */
#define _GNU_SOURCE 1 /* accept4 */
#include "CEI.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

enum {
    IN_CAPACITY = 64 * 1024,
    /* Past this much pending output, a write flushes at once instead of buffering more. */
    OUT_FLUSH_AT = 64 * 1024,
};

typedef struct {
    int fd;
    char *in;
    size_t in_start, in_end;
    char *out;
    size_t out_len, out_cap;
} sock;

/* fd -> sock, for the CEI_ functions Swift calls with an fd. */
static sock **table;
static size_t table_size;

static sock *sock_new(int fd) {
    if ((size_t)fd >= table_size) {
        size_t size = table_size ? table_size : 64;
        while (size <= (size_t)fd)
            size *= 2;
        sock **grown = realloc(table, size * sizeof(*grown));
        if (!grown)
            return NULL;
        memset(grown + table_size, 0, (size - table_size) * sizeof(*grown));
        table = grown;
        table_size = size;
    }
    sock *s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    s->fd = fd;
    table[fd] = s;
    return s;
}

static void sock_free(sock *s) {
    if ((size_t)s->fd < table_size && table[s->fd] == s)
        table[s->fd] = NULL;
    free(s->in);
    free(s->out);
    free(s);
}

static sock *sock_of(int fd) { return fd >= 0 && (size_t)fd < table_size ? table[fd] : NULL; }

/* Waits until fd is ready for `events` or tmo milliseconds pass. 0, ETIMEDOUT, or an errno. */
static int wait_ready(int fd, short events, unsigned tmo) {
    struct pollfd p = {.fd = fd, .events = events};
    for (;;) {
        int timeout = tmo == EI_SCLBK_INF_TMO || tmo > (unsigned)INT32_MAX ? -1 : (int)tmo;
        int n = poll(&p, 1, timeout);
        if (n > 0)
            return 0;
        if (n == 0)
            return ETIMEDOUT;
        if (errno != EINTR)
            return errno;
    }
}

/* Sends iov (all of it) within tmo. MSG_DONTWAIT first; poll() only when the socket is full. */
static int send_all(int fd, struct iovec *iov, int iovcnt, unsigned tmo) {
    struct msghdr mh;
    memset(&mh, 0, sizeof(mh));
    mh.msg_iov = iov;
    mh.msg_iovlen = (size_t)iovcnt;
    while (mh.msg_iovlen > 0) {
        ssize_t n = sendmsg(fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN)
                return errno;
            int err = wait_ready(fd, POLLOUT, tmo);
            if (err)
                return err;
            continue;
        }
        while (n > 0 && mh.msg_iovlen > 0) {
            if ((size_t)n >= mh.msg_iov->iov_len) {
                n -= (ssize_t)mh.msg_iov->iov_len;
                mh.msg_iov++;
                mh.msg_iovlen--;
            } else {
                mh.msg_iov->iov_base = (char *)mh.msg_iov->iov_base + n;
                mh.msg_iov->iov_len -= (size_t)n;
                n = 0;
            }
        }
    }
    return 0;
}

static int flush(sock *s, unsigned tmo) {
    if (s->out_len == 0)
        return 0;
    struct iovec iov = {.iov_base = s->out, .iov_len = s->out_len};
    int err = send_all(s->fd, &iov, 1, tmo);
    if (!err)
        s->out_len = 0;
    return err;
}

static int cb_socket(void **ctx, void *setup_ctx) {
    (void)setup_ctx;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return errno;
    sock *s = sock_new(fd);
    if (!s) {
        close(fd);
        return ENOMEM;
    }
    *ctx = s;
    return 0;
}

static int cb_close(void *ctx) {
    sock *s = ctx;
    int fd = s->fd;
    sock_free(s);
    /* On Linux the fd is released even when close() reports EINTR; retrying could close a reused fd. */
    if (close(fd) < 0 && errno != EINTR)
        return errno;
    return 0;
}

static int cb_listen(void *ctx, void *addr, int *len, int backlog) {
    sock *s = ctx;
    int on = 1;
    socklen_t slen = (socklen_t)*len;
    (void)setsockopt(s->fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on));
    if (bind(s->fd, addr, slen) < 0)
        return errno;
    if (listen(s->fd, backlog) < 0)
        return errno;
    if (getsockname(s->fd, addr, &slen) < 0)
        return errno;
    *len = (int)slen;
    return 0;
}

static int cb_accept(void **ctx, void *addr, int *len, unsigned tmo) {
    sock *listener = *ctx;
    int err = wait_ready(listener->fd, POLLIN, tmo);
    if (err)
        return err;
    socklen_t slen = (socklen_t)*len;
    int fd;
    do {
        fd = accept4(listener->fd, addr, &slen, SOCK_CLOEXEC);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0)
        return errno;
    int on = 1;
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof(on));
    sock *s = sock_new(fd);
    if (!s) {
        close(fd);
        return ENOMEM;
    }
    *len = (int)slen;
    *ctx = s;
    return 0;
}

static int cb_connect(void *ctx, void *addr, int len, unsigned tmo) {
    int fd = ((sock *)ctx)->fd;
    int flags = fcntl(fd, F_GETFL, 0);
    if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0)
        return errno;
    int res = connect(fd, addr, (socklen_t)len);
    int err = res < 0 ? errno : 0;
    if (err == EINPROGRESS) {
        err = wait_ready(fd, POLLOUT, tmo);
        if (!err) {
            socklen_t elen = sizeof(err);
            if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen) < 0)
                err = errno;
        }
    }
    if (fcntl(fd, F_SETFL, flags) < 0 && !err)
        err = errno;
    return err;
}

/* Buffers the whole write (ei then sees it done at once) unless the buffer is past OUT_FLUSH_AT, in
 * which case the buffer and this write go out now. */
static int cb_writev(void *ctx, const void *iov_, int iovcnt, ssize_t *len, unsigned tmo) {
    sock *s = ctx;
    const struct iovec *iov = iov_;
    size_t total = 0;
    for (int i = 0; i < iovcnt; i++)
        total += iov[i].iov_len;
    if (s->out_len + total > OUT_FLUSH_AT) {
        int err = flush(s, tmo);
        if (err)
            return err;
        if (total > OUT_FLUSH_AT) {
            /* Large message: straight to the socket, without a copy. */
            struct iovec copy[iovcnt > 0 ? iovcnt : 1];
            memcpy(copy, iov, sizeof(struct iovec) * (size_t)iovcnt);
            err = send_all(s->fd, copy, iovcnt, tmo);
            if (err)
                return err;
            *len = (ssize_t)total;
            return 0;
        }
    }
    if (s->out_len + total > s->out_cap) {
        size_t cap = s->out_cap ? s->out_cap : 4096;
        while (cap < s->out_len + total)
            cap *= 2;
        char *grown = realloc(s->out, cap);
        if (!grown)
            return ENOMEM;
        s->out = grown;
        s->out_cap = cap;
    }
    for (int i = 0; i < iovcnt; i++) {
        memcpy(s->out + s->out_len, iov[i].iov_base, iov[i].iov_len);
        s->out_len += iov[i].iov_len;
    }
    *len = (ssize_t)total;
    return 0;
}

static int cb_write(void *ctx, const char *buf, ssize_t *len, unsigned tmo) {
    struct iovec iov = {.iov_base = (void *)buf, .iov_len = (size_t)*len};
    return cb_writev(ctx, &iov, 1, len, tmo);
}

/* Serves reads from the input buffer, refilling it with one recv of up to 64 KiB. Before waiting for
 * input, pending output is flushed. */
static int cb_read(void *ctx, char *buf, ssize_t *len, unsigned tmo) {
    sock *s = ctx;
    if (s->in_start == s->in_end) {
        if (!s->in && !(s->in = malloc(IN_CAPACITY)))
            return ENOMEM;
        for (;;) {
            ssize_t n = recv(s->fd, s->in, IN_CAPACITY, MSG_DONTWAIT);
            if (n >= 0) {
                s->in_start = 0;
                s->in_end = (size_t)n;
                break;
            }
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN)
                return errno;
            int err = flush(s, tmo);
            if (err)
                return err;
            err = wait_ready(s->fd, POLLIN, tmo);
            if (err)
                return err;
        }
        if (s->in_end == 0) {
            *len = 0; /* end of stream */
            return 0;
        }
    }
    size_t n = s->in_end - s->in_start;
    if (n > (size_t)*len)
        n = (size_t)*len;
    memcpy(buf, s->in + s->in_start, n);
    s->in_start += n;
    *len = (ssize_t)n;
    return 0;
}

static int cb_handshake_packet_header_size(void *ctx, int *sz) {
    (void)ctx;
    *sz = 2; /* plain TCP distribution: 2-byte length header during the handshake */
    return 0;
}

static int cb_handshake_complete(void *ctx) {
    return flush(ctx, 5000);
}

static int cb_get_fd(void *ctx, int *fd) {
    *fd = ((sock *)ctx)->fd;
    return 0;
}

static ei_socket_callbacks callbacks = {
    .flags = EI_SCLBK_FLG_FULL_IMPL,
    .socket = cb_socket,
    .close = cb_close,
    .listen = cb_listen,
    .accept = cb_accept,
    .connect = cb_connect,
    .writev = cb_writev,
    .write = cb_write,
    .read = cb_read,
    .handshake_packet_header_size = cb_handshake_packet_header_size,
    .connect_handshake_complete = cb_handshake_complete,
    .accept_handshake_complete = cb_handshake_complete,
    .get_fd = cb_get_fd,
};

ei_socket_callbacks *CEI_socket_callbacks(void) { return &callbacks; }
int CEI_socket_callbacks_size(void) { return (int)sizeof(callbacks); }

long CEI_pending_input(int fd) {
    sock *s = sock_of(fd);
    return s ? (long)(s->in_end - s->in_start) : 0;
}

long CEI_pending_output(int fd) {
    sock *s = sock_of(fd);
    return s ? (long)s->out_len : 0;
}

int CEI_flush(int fd, unsigned tmo) {
    sock *s = sock_of(fd);
    return s ? flush(s, tmo) : EBADF;
}
