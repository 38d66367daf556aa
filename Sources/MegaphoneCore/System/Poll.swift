#if canImport(Glibc)
import Glibc
#endif

/// poll(2) and the few file calls the node makes outside sockets, through `syscall` like every other
/// system call (errno is read there and nowhere else).
enum Poll {
    /// Waits up to `timeout` ms (-1: forever) for events on `fds`; returns how many have some. A signal
    /// that interrupts the wait is retried; any other failure (EFAULT, EINVAL, ENOMEM: a bug or an
    /// exhausted machine) reads as "nothing ready", so the caller's loop simply turns again.
    static func poll(_ fds: inout [pollfd], timeout: CInt) -> Int {
        let count = nfds_t(fds.count)
        let n = fds.withUnsafeMutableBufferPointer { buffer in
            try? syscallBlocking("poll") { Glibc.poll(buffer.baseAddress, count, timeout) }
        }
        return Int(n ?? 0)
    }

    /// Whether `fd` is readable now.
    static func isReadable(_ fd: CInt) -> Bool {
        var fds = [pollfd(fd: fd, events: Int16(POLLIN), revents: 0)]
        return poll(&fds, timeout: 0) > 0
    }
}

/// `/dev/null` opened read-only: an fd to hold in reserve. -1 when none is left.
func openDevNull() -> CInt {
    (try? syscallBlocking("open(/dev/null)") { Glibc.open("/dev/null", O_RDONLY | O_CLOEXEC) }) ?? -1
}
