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

/* Socket callbacks for ei that wait with poll() instead of select() (which breaks past fd 1024), buffer
 * reads and writes in user space, and never block once a handshake is done; see sockets.c. Use them for
 * every distribution socket. */
ei_socket_callbacks *CEI_socket_callbacks(void);
int CEI_socket_callbacks_size(void);

/* Runs ei's accept handshake on fd, a connection the caller accepted from listen_fd (ei_accept's own
 * accept is bypassed), waiting at most timeout_ms in all. Blocks: call it on a thread of its own. The
 * connection's fd on success (fd itself), else ERL_ERROR with erl_errno set (ETIMEDOUT: too slow); fd
 * is closed then. ec may be a private copy of the node's ei_cnode. */
int CEI_accept_handshake(ei_cnode *ec, int listen_fd, int fd, unsigned timeout_ms, ErlConnect *conn);

/* Established connections (one thread, never blocking): */
/* Reads what the kernel has into the input buffer, without waiting; *received: bytes read. 0, or an
 * errno (EIO: the peer closed). Call it when poll() reports input. */
int CEI_fill_input(int fd, long *received);
/* Whether a whole message (or a tick) is in the input buffer: ei's receive then reads only from it. */
int CEI_input_ready(int fd);
/* Bytes already read from fd into user space (possibly part of a message). */
long CEI_pending_input(int fd);
/* Bytes written by ei but not yet taken by the kernel; watch POLLOUT while there are any. */
long CEI_pending_output(int fd);
/* Bytes ei has written to fd, and bytes the kernel took, since fd was opened: a message written when
 * the first count was N has left user space once the second reaches N. */
unsigned long long CEI_output_written(int fd);
unsigned long long CEI_output_sent(int fd);
/* Sends what the kernel takes of the pending output, without waiting. 0 or an errno. */
int CEI_flush(int fd);

/* Copies of fields Swift sees as fixed-size char tuples. */
const char *CEI_pid_node(const erlang_pid *pid);
void CEI_pid_set(erlang_pid *pid, const char *node, unsigned int num, unsigned int serial,
                 unsigned int creation);
const char *CEI_conn_nodename(const ErlConnect *conn);
const char *CEI_msg_toname(const erlang_msg *msg);
#endif
