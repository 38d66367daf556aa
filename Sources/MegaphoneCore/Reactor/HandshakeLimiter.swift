/// Unfinished TLS handshakes per client address, across all reactors: a client address that opens
/// connections and never finishes their handshakes cannot tie up more than its share.
///
/// An address is an `AddressKey` (an IPv4 address or an IPv6 /64), as for every per-address limit.
public final class HandshakeLimiter: Sendable {
    private let counts = Locked<[AddressKey: Int]>([:])

    public init() {}

    /// Takes a slot for `ip`'s address if it has fewer than `max`.
    public func acquire(_ ip: IPAddress, max: Int) -> Bool {
        let key = AddressKey(ip)
        return counts.withLock { counts in
            let n = counts[key, default: 0]
            guard n < max else { return false }
            counts[key] = n + 1
            return true
        }
    }

    public func release(_ ip: IPAddress) {
        let key = AddressKey(ip)
        counts.withLock { counts in
            let n = counts[key, default: 0]
            counts[key] = n > 1 ? n - 1 : nil
        }
    }

    /// Unfinished handshakes counted for `ip`'s address.
    public func count(_ ip: IPAddress) -> Int {
        let key = AddressKey(ip)
        return counts.withLock { $0[key, default: 0] }
    }
}
