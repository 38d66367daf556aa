/* The GNU functions the header declares; _GNU_SOURCE stays in this file (see CLinux.h). */
#define _GNU_SOURCE 1
#include <pthread.h>
#include <sys/socket.h>

#include "CLinux.h"

int CLinux_accept4(int fd, int flags) { return accept4(fd, 0, 0, flags); }

int CLinux_pthread_setname_np(pthread_t thread, const char *name) { return pthread_setname_np(thread, name); }
