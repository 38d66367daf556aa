/* Socket callbacks for ei (its "user supplied socket implementation"): plain TCP with these changes.
 *
 * 1. Waits use poll(), never select(). ei's own _tmo calls use select(), which cannot watch fds above
 *    FD_SETSIZE (1024); a front end holding 20,000 client sockets gets distribution fds far above that.
 *    Declared EI_SCLBK_FLG_FULL_IMPL, so ei leaves the timeouts to us and never flips O_NONBLOCK.
 * 2. Reads and writes are buffered in user space. ei reads each message as a 4-byte length and then the
 *    body, and writes each message with its own writev: two recv and one sendmsg per message. Here one
 *    recv may bring many messages, and writes collect in an output buffer that CEI_flush sends once per
 *    batch.
 * 3. Two modes per socket. During the handshake (on a handshake thread, see CEI_accept_handshake) reads
 *    and writes wait, but never past the handshake's deadline. Once the handshake is done the socket
 *    belongs to the distribution thread, which serves every peer and every client, so nothing waits:
 *    writes go out with MSG_DONTWAIT and what the kernel does not take stays in the output buffer (the
 *    caller bounds it, watches POLLOUT and calls CEI_flush); reads happen in CEI_fill_input, and ei's
 *    receive is called only once a whole message is in the input buffer (CEI_input_ready), so it never
 *    reaches the kernel. The fd's own flags are left alone, as ei's documentation asks.
 *
 * Threads: each socket is used by one thread at a time (its handshake thread, then the distribution
 * thread, handed over through a mutex-guarded mailbox). Only the fd -> socket table is shared; a mutex
 * guards it. */
#define _GNU_SOURCE 1 /* accept4 */
#include "CEI.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

enum {
    IN_CAPACITY = 64 * 1024,
    /* Past this much pending output, a write tries to send at once instead of only buffering. */
    OUT_FLUSH_AT = 64 * 1024,
    /* An output buffer that grew past this is freed once it has drained. */
    OUT_KEEP = 1024 * 1024,
};

typedef struct {
    int fd;
    /* Nonzero while the handshake runs: waits are allowed, up to `deadline` (CLOCK_MONOTONIC ms). */
    int may_block;
    long long deadline;
    char *in;
    size_t in_start, in_end, in_cap;
    char *out;
    size_t out_start, out_end, out_cap;
    /* Bytes ei handed us for this socket, and bytes the kernel took, since it was opened. */
    unsigned long long written, sent;
} sock;

/* fd -> sock, for the CEI_ functions Swift calls with an fd. Handshake threads add and remove their
 * sockets while the distribution thread looks its own up, and growing the table moves it: every access
 * holds the mutex. A sock itself is used only by the thread that owns it. */
static sock **table;
static size_t table_size;
static pthread_mutex_t table_lock = PTHREAD_MUTEX_INITIALIZER;

/* The connection a handshake thread accepted itself, for cb_accept to take (see CEI_accept_handshake),
 * and the deadline of that handshake. Thread-local: each handshake thread has its own. */
static __thread int tl_accepted_fd = -1;
static __thread long long tl_deadline;

static long long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static sock *sock_new(int fd) {
    sock *s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    s->fd = fd;
    pthread_mutex_lock(&table_lock);
    if ((size_t)fd >= table_size) {
        size_t size = table_size ? table_size : 64;
        while (size <= (size_t)fd)
            size *= 2;
        sock **grown = realloc(table, size * sizeof(*grown));
        if (!grown) {
            pthread_mutex_unlock(&table_lock);
            free(s);
            return NULL;
        }
        memset(grown + table_size, 0, (size - table_size) * sizeof(*grown));
        table = grown;
        table_size = size;
    }
    table[fd] = s;
    pthread_mutex_unlock(&table_lock);
    return s;
}

static void sock_free(sock *s) {
    pthread_mutex_lock(&table_lock);
    if ((size_t)s->fd < table_size && table[s->fd] == s)
        table[s->fd] = NULL;
    pthread_mutex_unlock(&table_lock);
    free(s->in);
    free(s->out);
    free(s);
}

static sock *sock_of(int fd) {
    sock *s = NULL;
    pthread_mutex_lock(&table_lock);
    if (fd >= 0 && (size_t)fd < table_size)
        s = table[fd];
    pthread_mutex_unlock(&table_lock);
    return s;
}

/* Waits until fd is ready for `events`, tmo milliseconds pass, or the socket's deadline passes (if it
 * has one). 0, ETIMEDOUT, or an errno. */
static int wait_ready(int fd, short events, unsigned tmo, long long deadline) {
    struct pollfd p = {.fd = fd, .events = events};
    long long until = tmo == EI_SCLBK_INF_TMO || tmo > (unsigned)INT32_MAX ? -1 : now_ms() + tmo;
    if (deadline > 0 && (until < 0 || deadline < until))
        until = deadline;
    for (;;) {
        int timeout = -1;
        if (until >= 0) {
            long long left = until - now_ms();
            if (left <= 0)
                return ETIMEDOUT;
            timeout = left > INT32_MAX ? INT32_MAX : (int)left;
        }
        int n = poll(&p, 1, timeout);
        if (n > 0)
            return 0;
        if (n < 0 && errno != EINTR)
            return errno;
    }
}

/* Sends what the kernel takes now of iov (advancing it); 0 with *sent set, or an errno. */
static int send_now(int fd, struct iovec *iov, int iovcnt, size_t *sent) {
    struct msghdr mh;
    memset(&mh, 0, sizeof(mh));
    mh.msg_iov = iov;
    mh.msg_iovlen = (size_t)iovcnt;
    *sent = 0;
    while (mh.msg_iovlen > 0) {
        ssize_t n = sendmsg(fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return 0;
            return errno;
        }
        *sent += (size_t)n;
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

/* Sends what the kernel takes of the output buffer, without waiting. */
static int flush_now(sock *s) {
    if (s->out_end == s->out_start)
        return 0;
    struct iovec iov = {.iov_base = s->out + s->out_start, .iov_len = s->out_end - s->out_start};
    size_t n;
    int err = send_now(s->fd, &iov, 1, &n);
    s->out_start += n;
    s->sent += n;
    if (s->out_start == s->out_end) {
        s->out_start = s->out_end = 0;
        if (s->out_cap > OUT_KEEP) {
            free(s->out);
            s->out = NULL;
            s->out_cap = 0;
        }
    }
    return err;
}

/* Handshake only: sends the whole output buffer, waiting up to tmo and the deadline. */
static int flush_wait(sock *s, unsigned tmo) {
    for (;;) {
        int err = flush_now(s);
        if (err || s->out_end == s->out_start)
            return err;
        err = wait_ready(s->fd, POLLOUT, tmo, s->deadline);
        if (err)
            return err;
    }
}

/* Appends iov to the output buffer. */
static int append(sock *s, const struct iovec *iov, int iovcnt, size_t skip) {
    size_t total = 0;
    for (int i = 0; i < iovcnt; i++)
        total += iov[i].iov_len;
    total -= skip;
    if (s->out_end + total > s->out_cap && s->out_start > 0) {
        memmove(s->out, s->out + s->out_start, s->out_end - s->out_start);
        s->out_end -= s->out_start;
        s->out_start = 0;
    }
    if (s->out_end + total > s->out_cap) {
        size_t cap = s->out_cap ? s->out_cap : 4096;
        while (cap < s->out_end + total)
            cap *= 2;
        char *grown = realloc(s->out, cap);
        if (!grown)
            return ENOMEM;
        s->out = grown;
        s->out_cap = cap;
    }
    for (int i = 0; i < iovcnt; i++) {
        size_t len = iov[i].iov_len;
        const char *base = iov[i].iov_base;
        if (skip >= len) {
            skip -= len;
            continue;
        }
        memcpy(s->out + s->out_end, base + skip, len - skip);
        s->out_end += len - skip;
        skip = 0;
    }
    return 0;
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

/* The listening socket is made non-blocking: the distribution thread accepts on it itself (accept4
 * after poll, see DistributionAcceptor) and must not block when a client resets before the accept. */
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
    int flags = fcntl(s->fd, F_GETFL, 0);
    if (flags < 0 || fcntl(s->fd, F_SETFL, flags | O_NONBLOCK) < 0)
        return errno;
    *len = (int)slen;
    return 0;
}

/* ei_accept calls this for the connection. It takes the one its thread accepted already (see
 * CEI_accept_handshake) instead of accepting one: the distribution thread accepts, so that waiting for
 * a connection never blocks anyone, and the handshake runs on its own thread. */
static int cb_accept(void **ctx, void *addr, int *len, unsigned tmo) {
    (void)tmo;
    int fd = tl_accepted_fd;
    if (fd < 0)
        return EINVAL; /* not called through CEI_accept_handshake */
    tl_accepted_fd = -1;
    socklen_t slen = (socklen_t)*len;
    if (getpeername(fd, addr, &slen) < 0) {
        int err = errno;
        close(fd);
        return err;
    }
    int on = 1;
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof(on));
    sock *s = sock_new(fd);
    if (!s) {
        close(fd);
        return ENOMEM;
    }
    s->may_block = 1;
    s->deadline = tl_deadline;
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
        err = wait_ready(fd, POLLOUT, tmo, 0);
        if (!err) {
            socklen_t elen = sizeof(err);
            if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen) < 0)
                err = errno;
        }
    }
    if (fcntl(fd, F_SETFL, flags) < 0 && !err)
        err = errno;
    ((sock *)ctx)->may_block = 1;
    return err;
}

/* Buffers the write; ei sees it done at once. A large write, or one that takes the buffer past
 * OUT_FLUSH_AT, first sends what the kernel takes without waiting (a large message goes from ei's
 * buffer without a copy when the socket has room). During the handshake a full buffer is waited on. */
static int cb_writev(void *ctx, const void *iov_, int iovcnt, ssize_t *len, unsigned tmo) {
    sock *s = ctx;
    const struct iovec *iov = iov_;
    size_t total = 0;
    for (int i = 0; i < iovcnt; i++)
        total += iov[i].iov_len;
    size_t skip = 0;
    if (s->out_end - s->out_start + total > OUT_FLUSH_AT) {
        int err = s->may_block ? flush_wait(s, tmo) : flush_now(s);
        if (err)
            return err;
        if (s->out_end == s->out_start && total > OUT_FLUSH_AT) {
            struct iovec copy[iovcnt > 0 ? iovcnt : 1];
            memcpy(copy, iov, sizeof(struct iovec) * (size_t)iovcnt);
            err = send_now(s->fd, copy, iovcnt, &skip);
            if (err)
                return err;
            s->sent += skip;
        }
    }
    s->written += total;
    if (skip < total) {
        int err = append(s, iov, iovcnt, skip);
        if (err)
            return err;
    }
    *len = (ssize_t)total;
    return 0;
}

static int cb_write(void *ctx, const char *buf, ssize_t *len, unsigned tmo) {
    struct iovec iov = {.iov_base = (void *)buf, .iov_len = (size_t)*len};
    return cb_writev(ctx, &iov, 1, len, tmo);
}

/* Reads from the kernel into the free end of the input buffer, without waiting. Bytes read, 0 for end
 * of stream, -1 with errno. */
static ssize_t recv_some(sock *s) {
    if (!s->in) {
        if (!(s->in = malloc(IN_CAPACITY))) {
            errno = ENOMEM;
            return -1;
        }
        s->in_cap = IN_CAPACITY;
    }
    if (s->in_start == s->in_end)
        s->in_start = s->in_end = 0;
    if (s->in_end == s->in_cap && s->in_start > 0) {
        memmove(s->in, s->in + s->in_start, s->in_end - s->in_start);
        s->in_end -= s->in_start;
        s->in_start = 0;
    }
    for (;;) {
        ssize_t n = recv(s->fd, s->in + s->in_end, s->in_cap - s->in_end, MSG_DONTWAIT);
        if (n >= 0) {
            s->in_end += (size_t)n;
            return n;
        }
        if (errno != EINTR)
            return -1;
    }
}

/* Serves reads from the input buffer. During the handshake an empty buffer is refilled, flushing
 * pending output first and waiting up to tmo and the deadline. Once established the distribution thread
 * calls ei's receive only when a whole message is buffered (CEI_input_ready), so an empty buffer then
 * is a bug: reported as ETIMEDOUT (the peer is dropped), never waited on. */
static int cb_read(void *ctx, char *buf, ssize_t *len, unsigned tmo) {
    sock *s = ctx;
    if (s->in_start == s->in_end) {
        if (!s->may_block)
            return ETIMEDOUT;
        for (;;) {
            ssize_t n = recv_some(s);
            if (n > 0)
                break;
            if (n == 0) {
                *len = 0; /* end of stream */
                return 0;
            }
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                return errno;
            int err = flush_wait(s, tmo);
            if (err)
                return err;
            err = wait_ready(s->fd, POLLIN, tmo, s->deadline);
            if (err)
                return err;
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

/* The last handshake packet goes out (within the deadline); from here on nothing waits. */
static int cb_handshake_complete(void *ctx) {
    sock *s = ctx;
    int err = flush_wait(s, 5000);
    s->may_block = 0;
    s->deadline = 0;
    return err;
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

int CEI_accept_handshake(ei_cnode *ec, int listen_fd, int fd, unsigned timeout_ms, ErlConnect *conn) {
    tl_accepted_fd = fd;
    tl_deadline = now_ms() + timeout_ms;
    int rc = ei_accept_tmo(ec, listen_fd, conn, timeout_ms);
    if (tl_accepted_fd >= 0) {
        /* ei failed before it asked for the connection: it is still ours to close. */
        close(tl_accepted_fd);
        tl_accepted_fd = -1;
    }
    return rc;
}

/* The size of the message at the head of the input buffer, length field included (a tick is 4), or 4
 * while the length field itself is incomplete. */
static size_t head_size(const sock *s) {
    if (s->in_end - s->in_start < 4)
        return 4;
    const unsigned char *p = (const unsigned char *)s->in + s->in_start;
    uint32_t len = (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
    return 4 + (size_t)len;
}

int CEI_input_ready(int fd) {
    sock *s = sock_of(fd);
    return s && s->in_end - s->in_start >= head_size(s);
}

int CEI_fill_input(int fd, long *received) {
    *received = 0;
    sock *s = sock_of(fd);
    if (!s)
        return EBADF;
    if (s->in_start == s->in_end && s->in_cap > IN_CAPACITY) {
        /* A large message made the buffer grow; it is drained now. */
        free(s->in);
        s->in = NULL;
        s->in_start = s->in_end = s->in_cap = 0;
    }
    for (;;) {
        size_t need = head_size(s);
        size_t have = s->in_end - s->in_start;
        if (s->in && have >= need)
            return 0;
        if (s->in && s->in_end == s->in_cap && s->in_start == 0) {
            /* Full and the head message is larger: grow as its bytes arrive (doubling, at most to its
             * size), so a length field alone never makes us allocate what the peer does not send. */
            size_t cap = s->in_cap * 2;
            if (cap > need)
                cap = need;
            char *grown = realloc(s->in, cap);
            if (!grown)
                return ENOMEM;
            s->in = grown;
            s->in_cap = cap;
        }
        ssize_t n = recv_some(s);
        if (n > 0) {
            *received += n;
            continue;
        }
        if (n == 0)
            return EIO; /* end of stream, as ei reports it */
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return 0;
        return errno;
    }
}

long CEI_pending_input(int fd) {
    sock *s = sock_of(fd);
    return s ? (long)(s->in_end - s->in_start) : 0;
}

long CEI_pending_output(int fd) {
    sock *s = sock_of(fd);
    return s ? (long)(s->out_end - s->out_start) : 0;
}

unsigned long long CEI_output_written(int fd) {
    sock *s = sock_of(fd);
    return s ? s->written : 0;
}

unsigned long long CEI_output_sent(int fd) {
    sock *s = sock_of(fd);
    return s ? s->sent : 0;
}

int CEI_flush(int fd) {
    sock *s = sock_of(fd);
    return s ? flush_now(s) : EBADF;
}
