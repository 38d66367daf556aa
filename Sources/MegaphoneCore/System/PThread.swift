import CLinux

#if canImport(Glibc)
import Glibc
#endif

/// Plain pthreads for the loops that block in epoll_wait/poll. Swift concurrency's cooperative pool
/// has one thread per core (two here); a loop that blocks would take one of them for good.
enum PThread {
    private final class Box {
        let body: @Sendable () -> Void
        init(_ body: @escaping @Sendable () -> Void) { self.body = body }
    }

    /// Starts `body` on a new thread named `name` (at most 15 bytes are kept).
    static func spawn(name: String, _ body: @escaping @Sendable () -> Void) throws(SystemError) -> pthread_t {
        let box = Unmanaged.passRetained(Box(body)).toOpaque()
        var thread = pthread_t()
        let rc = pthread_create(&thread, nil, { arg in
            guard let arg else { return nil }
            let box = Unmanaged<Box>.fromOpaque(arg).takeRetainedValue()
            box.body()
            return nil
        }, box)
        guard rc == 0 else {
            Unmanaged<Box>.fromOpaque(box).release()
            throw SystemError(errno: rc, call: "pthread_create")
        }
        _ = CLinux_pthread_setname_np(thread, String(name.prefix(15)))
        return thread
    }

    static func join(_ thread: pthread_t) {
        _ = pthread_join(thread, nil)
    }
}

/// Nanoseconds on the monotonic clock.
func monotonicNanos() -> Int64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec)
}

/// Milliseconds on the monotonic clock.
func monotonicMillis() -> Int64 {
    monotonicNanos() / 1_000_000
}
