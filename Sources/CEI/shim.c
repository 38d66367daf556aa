#include "CEI.h"

#include <string.h>

int CEI_erl_errno(void) { return erl_errno; }

const char *CEI_pid_node(const erlang_pid *pid) { return pid->node; }

void CEI_pid_set(erlang_pid *pid, const char *node, unsigned int num, unsigned int serial,
                 unsigned int creation) {
    /* Called for every message sent: copy the name only, not the whole 1 KB array. */
    size_t n = strnlen(node, sizeof(pid->node) - 1);
    memcpy(pid->node, node, n);
    pid->node[n] = '\0';
    pid->num = num;
    pid->serial = serial;
    pid->creation = creation;
}

const char *CEI_conn_nodename(const ErlConnect *conn) { return conn->nodename; }
const char *CEI_msg_toname(const erlang_msg *msg) { return msg->toname; }
