#ifndef CEI_H
#define CEI_H
/* libei.a (Debian erlang-dev) is the thread-safe build: with _REENTRANT ei.h maps erl_errno to a per-thread
 * slot. Without it ei.h names the global __erl_errno that only libei_st.a defines ("undefined reference to
 * __erl_errno"). The define must be seen by the Swift importer too, so it lives here, not in cSettings. */
#ifndef _REENTRANT
#define _REENTRANT 1
#endif
#include <ei.h>

/* erl_errno expands to a call through a function pointer: Swift cannot import it. */
int CEI_erl_errno(void);

/* Macros with arithmetic are not imported by Swift ("structure not supported"). */
enum {
    CEI_MAXATOMLEN = MAXATOMLEN,
    CEI_MAXATOMLEN_UTF8 = MAXATOMLEN_UTF8,
    CEI_MAXNODELEN = MAXNODELEN,
    CEI_ERL_TICK = ERL_TICK,
    CEI_ERL_ERROR = ERL_ERROR,
    CEI_ERL_MSG = ERL_MSG,
    CEI_ERL_SEND = ERL_SEND,
    CEI_ERL_REG_SEND = ERL_REG_SEND,
    CEI_ERL_LINK = ERL_LINK,
    CEI_ERL_UNLINK = ERL_UNLINK,
    CEI_ERL_EXIT = ERL_EXIT,
    CEI_ERL_EXIT2 = ERL_EXIT2,
    CEI_ERL_NO_DAEMON = ERL_NO_DAEMON,
    CEI_ERL_NO_PORT = ERL_NO_PORT,
    CEI_ERL_CONNECT_FAIL = ERL_CONNECT_FAIL,
    CEI_ERL_TIMEOUT = ERL_TIMEOUT,
};

/* Socket callbacks (ei's "user supplied socket implementation") that are plain blocking TCP, except that
 * every timeout is a poll() instead of ei's built-in select(). select() cannot watch fds above
 * FD_SETSIZE (1024) and a front end holding 20,000 client sockets gets distribution fds far above that;
 * ei's default _tmo calls then corrupt memory or drop the link. Declared EI_SCLBK_FLG_FULL_IMPL, so ei
 * leaves the timeouts to us and never flips O_NONBLOCK on the fd. */
ei_socket_callbacks *CEI_poll_socket_callbacks(void);
int CEI_poll_socket_callbacks_size(void);

/* Copies of fields Swift sees as fixed-size char tuples. */
const char *CEI_pid_node(const erlang_pid *pid);
void CEI_pid_set(erlang_pid *pid, const char *node, unsigned int num, unsigned int serial,
                 unsigned int creation);
const char *CEI_conn_nodename(const ErlConnect *conn);
const char *CEI_msg_toname(const erlang_msg *msg);
#endif
