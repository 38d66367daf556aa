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

/* Socket callbacks for ei that time out with poll() instead of select() (which breaks past fd 1024)
 * and buffer reads and writes in user space; see sockets.c. Use them for every distribution socket, and
 * call CEI_flush after each batch of sends: until then, output may sit in the buffer. */
ei_socket_callbacks *CEI_socket_callbacks(void);
int CEI_socket_callbacks_size(void);
/* Bytes already read from fd into user space: check before poll(), which cannot see them. */
long CEI_pending_input(int fd);
/* Bytes written by ei but not yet sent. */
long CEI_pending_output(int fd);
/* Sends the pending output within tmo milliseconds. 0 or an errno (ETIMEDOUT). */
int CEI_flush(int fd, unsigned tmo);

/* Copies of fields Swift sees as fixed-size char tuples. */
const char *CEI_pid_node(const erlang_pid *pid);
void CEI_pid_set(erlang_pid *pid, const char *node, unsigned int num, unsigned int serial,
                 unsigned int creation);
const char *CEI_conn_nodename(const ErlConnect *conn);
const char *CEI_msg_toname(const erlang_msg *msg);
#endif
