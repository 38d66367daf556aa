/* accept4 is a GNU extension; defined here, not in CEI.h, so the module's headers see plain glibc. */
#define _GNU_SOURCE 1
#include "CEI.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

int CEI_erl_errno(void) { return erl_errno; }

#define FD_OF(ctx) ((int)(intptr_t)(ctx))
#define CTX_OF(fd) ((void *)(intptr_t)(fd))

/* Waits until fd is ready for `events` or tmo milliseconds pass. 0, ETIMEDOUT, or an errno. */
static int wait_ready(int fd, short events, unsigned tmo) {
    if (tmo == EI_SCLBK_INF_TMO)
        return 0;
    struct pollfd p = {.fd = fd, .events = events};
    for (;;) {
        int timeout = tmo > (unsigned)INT32_MAX ? -1 : (int)tmo;
        int n = poll(&p, 1, timeout);
        if (n > 0)
            return 0;
        if (n == 0)
            return ETIMEDOUT;
        if (errno != EINTR)
            return errno;
    }
}

static int cb_socket(void **ctx, void *setup_ctx) {
    (void)setup_ctx;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return errno;
    *ctx = CTX_OF(fd);
    return 0;
}

static int cb_close(void *ctx) {
    /* On Linux the fd is released even when close() reports EINTR; retrying could close a reused fd. */
    if (close(FD_OF(ctx)) < 0 && errno != EINTR)
        return errno;
    return 0;
}

static int cb_listen(void *ctx, void *addr, int *len, int backlog) {
    int fd = FD_OF(ctx);
    int on = 1;
    socklen_t slen = (socklen_t)*len;
    (void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on));
    if (bind(fd, addr, slen) < 0)
        return errno;
    if (listen(fd, backlog) < 0)
        return errno;
    if (getsockname(fd, addr, &slen) < 0)
        return errno;
    *len = (int)slen;
    return 0;
}

static int cb_accept(void **ctx, void *addr, int *len, unsigned tmo) {
    int lfd = FD_OF(*ctx);
    int err = wait_ready(lfd, POLLIN, tmo);
    if (err)
        return err;
    socklen_t slen = (socklen_t)*len;
    int fd;
    do {
        fd = accept4(lfd, addr, &slen, SOCK_CLOEXEC);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0)
        return errno;
    int on = 1;
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof(on));
    *len = (int)slen;
    *ctx = CTX_OF(fd);
    return 0;
}

static int cb_connect(void *ctx, void *addr, int len, unsigned tmo) {
    int fd = FD_OF(ctx);
    if (tmo == EI_SCLBK_INF_TMO) {
        if (connect(fd, addr, (socklen_t)len) < 0)
            return errno;
        return 0;
    }
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

/* One write: ei loops over partial writes itself. The write is tried first and poll() is used only when
 * the socket is full, so the common case costs one system call. MSG_DONTWAIT keeps a bounded write from
 * blocking without changing the fd's own flags. */
static int cb_writev(void *ctx, const void *iov, int iovcnt, ssize_t *len, unsigned tmo) {
    int fd = FD_OF(ctx);
    struct msghdr mh;
    memset(&mh, 0, sizeof(mh));
    mh.msg_iov = (struct iovec *)iov;
    mh.msg_iovlen = (size_t)iovcnt;
    int flags = MSG_NOSIGNAL | (tmo == EI_SCLBK_INF_TMO ? 0 : MSG_DONTWAIT);
    for (;;) {
        ssize_t n = sendmsg(fd, &mh, flags);
        if (n >= 0) {
            *len = n;
            return 0;
        }
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN)
            return errno;
        int err = wait_ready(fd, POLLOUT, tmo);
        if (err)
            return err;
    }
}

static int cb_write(void *ctx, const char *buf, ssize_t *len, unsigned tmo) {
    struct iovec iov = {.iov_base = (void *)buf, .iov_len = (size_t)*len};
    return cb_writev(ctx, &iov, 1, len, tmo);
}

/* One read, tried before any poll(): ei reads a message's length and then its body, and both are usually
 * in the socket already. */
static int cb_read(void *ctx, char *buf, ssize_t *len, unsigned tmo) {
    int fd = FD_OF(ctx);
    int flags = tmo == EI_SCLBK_INF_TMO ? 0 : MSG_DONTWAIT;
    for (;;) {
        ssize_t n = recv(fd, buf, (size_t)*len, flags);
        if (n >= 0) {
            *len = n;
            return 0;
        }
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN)
            return errno;
        int err = wait_ready(fd, POLLIN, tmo);
        if (err)
            return err;
    }
}

static int cb_handshake_packet_header_size(void *ctx, int *sz) {
    (void)ctx;
    *sz = 2; /* plain TCP distribution: 2-byte length header during the handshake */
    return 0;
}

static int cb_handshake_complete(void *ctx) {
    (void)ctx;
    return 0;
}

static int cb_get_fd(void *ctx, int *fd) {
    *fd = FD_OF(ctx);
    return 0;
}

static ei_socket_callbacks poll_callbacks = {
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

ei_socket_callbacks *CEI_poll_socket_callbacks(void) { return &poll_callbacks; }
int CEI_poll_socket_callbacks_size(void) { return (int)sizeof(poll_callbacks); }

const char *CEI_pid_node(const erlang_pid *pid) { return pid->node; }

void CEI_pid_set(erlang_pid *pid, const char *node, unsigned int num, unsigned int serial,
                 unsigned int creation) {
    memset(pid, 0, sizeof(*pid));
    strncpy(pid->node, node, sizeof(pid->node) - 1);
    pid->num = num;
    pid->serial = serial;
    pid->creation = creation;
}

const char *CEI_conn_nodename(const ErlConnect *conn) { return conn->nodename; }
const char *CEI_msg_toname(const erlang_msg *msg) { return msg->toname; }
