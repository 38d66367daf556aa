
/// Unfinished TLS handshakes per client IP, across all reactors: a client address that opens
/// connections and never finishes their handshakes cannot tie up more than its share.
public final class HandshakeLimiter: Sendable {
    private let counts = Locked<[IPAddress: Int]>([:])

    public init() {}

    /// Takes a slot for `ip` if it has fewer than `max`.
    public func acquire(_ ip: IPAddress, max: Int) -> Bool {
        counts.withLock { counts in
            let n = counts[ip, default: 0]
            guard n < max else { return false }
            counts[ip] = n + 1
            return true
        }
    }

    public func release(_ ip: IPAddress) {
        counts.withLock { counts in
            let n = counts[ip, default: 0]
            counts[ip] = n > 1 ? n - 1 : nil
        }
    }

    public func count(_ ip: IPAddress) -> Int {
        counts.withLock { $0[ip, default: 0] }
    }
}
