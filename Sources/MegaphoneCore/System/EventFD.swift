import CLinux

#if canImport(Glibc)
import Glibc
#endif

/// An eventfd used to wake a thread that sleeps in epoll_wait or poll. Any thread may `signal()`;
/// only the owning thread `drain()`s.
final class EventFD: Sendable {
    let fd: CInt

    init() throws(SystemError) {
        fd = try syscallBlocking("eventfd") { CLinux.eventfd(0, CInt(EFD_NONBLOCK | EFD_CLOEXEC)) }
    }

    deinit { closeFD(fd) }

    func signal() {
        var one: UInt64 = 1
        // EAGAIN means the counter is saturated: the reader is woken either way.
        _ = try? syscall("write(eventfd)") { Glibc.write(fd, &one, 8) }
    }

    func drain() {
        var value: UInt64 = 0
        _ = try? syscall("read(eventfd)") { Glibc.read(fd, &value, 8) }
    }
}
