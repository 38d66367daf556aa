#ifndef CLINUX_H
#define CLINUX_H
/* Linux-only headers that Swift's Glibc module does not import, and GNU functions it hides.
 * No _GNU_SOURCE here: a header that defines it changes the system structs it includes (fd_set), and
 * Clang then refuses to merge them with the other C modules' view. The GNU functions are wrapped in
 * CLinux.c, which is compiled with _GNU_SOURCE. */
#include <pthread.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <netinet/tcp.h>

/* EPOLLET is 1u << 31: as an enum constant it does not fit a signed int and Swift imports it oddly. */
static inline unsigned int CLinux_EPOLLET(void) { return EPOLLET; }

/* The socket type flags, whose declarations end up owned by different Clang modules in debug and
 * release builds; one name each here. */
enum {
    CLinux_SOCK_STREAM = SOCK_STREAM,
    CLinux_SOCK_NONBLOCK = SOCK_NONBLOCK,
    CLinux_SOCK_CLOEXEC = SOCK_CLOEXEC,
};

/* accept4 and pthread_setname_np are _GNU_SOURCE functions, invisible through Glibc. */
int CLinux_accept4(int fd, int flags);
int CLinux_pthread_setname_np(pthread_t thread, const char *name);
#endif
