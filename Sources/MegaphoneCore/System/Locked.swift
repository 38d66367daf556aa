#if canImport(Glibc)
import Glibc
#endif

/// A value behind a pthread mutex.
///
/// Used instead of `Synchronization.Mutex`, whose contended path runs inside the Swift runtime
/// library, which is not built for ThreadSanitizer: TSan then misses the lock and reports the guarded
/// accesses as a race (`scripts/sanitize`). TSan intercepts pthread_mutex_lock, and uncontended it
/// costs the same.
final class Locked<Value: Sendable>: @unchecked Sendable {
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private var value: Value

    init(_ value: Value) {
        mutex = .allocate(capacity: 1)
        mutex.initialize(to: pthread_mutex_t())
        pthread_mutex_init(mutex, nil)
        self.value = value
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    func withLock<Result>(_ body: (inout Value) throws -> Result) rethrows -> Result {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body(&value)
    }
}
