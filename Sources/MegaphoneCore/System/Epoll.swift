import CLinux

#if canImport(Glibc)
import Glibc
#endif

/// The epoll calls, named as in C so that one grep finds both. `package`: megaphone-load's loop uses
/// them too.
package enum Epoll {
    package static let `in` = UInt32(EPOLLIN.rawValue)
    package static let out = UInt32(EPOLLOUT.rawValue)
    package static let rdhup = UInt32(EPOLLRDHUP.rawValue)
    package static let err = UInt32(EPOLLERR.rawValue)
    package static let hup = UInt32(EPOLLHUP.rawValue)
    package static let edgeTriggered = CLinux_EPOLLET()
    package static let exclusive = UInt32(EPOLLEXCLUSIVE.rawValue)

    package static func epoll_create() throws(SystemError) -> CInt {
        try syscallBlocking("epoll_create1") { CLinux.epoll_create1(CInt(EPOLL_CLOEXEC)) }
    }

    package static func epoll_ctl(epfd: CInt, op: CInt, fd: CInt, events: UInt32, data: UInt64) throws(SystemError) {
        var ev = epoll_event()
        ev.events = events
        ev.data.u64 = data
        _ = try syscallBlocking("epoll_ctl") { CLinux.epoll_ctl(epfd, op, fd, &ev) }
    }

    package static func add(epfd: CInt, fd: CInt, events: UInt32, data: UInt64) throws(SystemError) {
        try epoll_ctl(epfd: epfd, op: EPOLL_CTL_ADD, fd: fd, events: events, data: data)
    }

    package static func modify(epfd: CInt, fd: CInt, events: UInt32, data: UInt64) throws(SystemError) {
        try epoll_ctl(epfd: epfd, op: EPOLL_CTL_MOD, fd: fd, events: events, data: data)
    }

    package static func delete(epfd: CInt, fd: CInt) {
        // Fails only when fd is not registered; the caller is removing it either way.
        try? epoll_ctl(epfd: epfd, op: EPOLL_CTL_DEL, fd: fd, events: 0, data: 0)
    }

    /// Waits for events; `timeout` in milliseconds, -1 for none. Returns how many were filled in.
    package static func epoll_wait(
        epfd: CInt, events: UnsafeMutablePointer<epoll_event>, maxevents: CInt, timeout: CInt
    ) throws(SystemError) -> Int {
        Int(try syscallBlocking("epoll_wait") { CLinux.epoll_wait(epfd, events, maxevents, timeout) })
    }
}
