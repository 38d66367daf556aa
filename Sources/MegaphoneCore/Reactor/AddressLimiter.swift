/// Open connections and recent connection attempts per client address, across all reactors:
/// `max_connections_per_ip` and `connection_rate_per_ip`.
///
/// An address is an `AddressKey`: an IPv4 address or an IPv6 /64.
///
/// Memory is bounded whatever the spread of source addresses: an entry lives while its address has
/// open connections (bounded by the connections themselves) or, with a rate set, until its bucket is
/// full again (at most one period). Entries of the second kind are capped at `maxIdleEntries`; past
/// the cap the oldest are not looked for: an entry that would go over it is dropped, forgetting that
/// address's recent attempts (the global `max_connections` still holds). Sweeps that drop refilled
/// entries run at most once a second, so a flood of new addresses cannot make every accept scan the
/// table.
///
/// A connection that was admitted holds a handle (never 0) that `release` takes back; the reactor
/// keeps it in the connection's slot. Thread-safe: one mutex, taken once per accept and per close.
public final class AddressLimiter: Sendable {
    /// Why a connection was refused.
    public enum Refusal: Sendable {
        case tooMany
        case tooFast
    }

    public enum Admission: Equatable, Sendable {
        /// Admitted; pass `handle` to `release` when the connection closes (0: nothing to release).
        case admitted(handle: UInt32)
        case refused(Refusal)
    }

    struct Entry {
        var key: AddressKey
        var connections: Int32 = 0
        /// Tokens left at `stamp` (milliseconds), in thousandths of a token.
        var milliTokens: Int64 = 0
        var stamp: Int64 = 0
        var live = false
    }

    struct State {
        var index: [AddressKey: UInt32] = [:]
        /// Slot 0 is never used: handle 0 means "not tracked".
        var entries: [Entry] = [Entry(key: AddressKey(.anyIPv4))]
        var free: [UInt32] = []
        /// Entries with no open connection, kept for their bucket.
        var idle = 0
        var lastSweep: Int64 = -1_000_000
    }

    private let state = Locked(State())
    public let maxIdleEntries: Int

    /// - Parameter maxIdleEntries: most addresses remembered for their rate alone (about 80 bytes each).
    public init(maxIdleEntries: Int = 65_536) {
        self.maxIdleEntries = maxIdleEntries
    }

    /// Counts a connection attempt from `ip` at `now` (monotonic milliseconds) and decides. `maxPerIP`
    /// `.max` and `rate` nil turn the limits off; with both off nothing is tracked.
    public func admit(_ ip: IPAddress, now: Int64, maxPerIP: Int, rate: ConnectionRate?) -> Admission {
        guard maxPerIP != .max || rate != nil else { return .admitted(handle: 0) }
        let key = AddressKey(ip)
        return state.withLock { s -> Admission in
            let handle: UInt32
            if let h = s.index[key] {
                handle = h
            } else {
                handle = Self.insert(&s, key)
                if let rate { s.entries[Int(handle)].milliTokens = Int64(rate.count) * 1000 }
                s.entries[Int(handle)].stamp = now
                s.idle += 1
            }
            let i = Int(handle)
            if let rate {
                Self.refill(&s.entries[i], now: now, rate: rate)
                guard s.entries[i].milliTokens >= 1000 else {
                    return .refused(.tooFast)
                }
                s.entries[i].milliTokens -= 1000
            }
            guard Int(s.entries[i].connections) < maxPerIP else {
                if s.entries[i].connections == 0 && rate == nil { Self.remove(&s, handle) }
                return .refused(.tooMany)
            }
            if s.entries[i].connections == 0 { s.idle -= 1 }
            s.entries[i].connections += 1
            return .admitted(handle: handle)
        }
    }

    /// A connection admitted with `handle` has closed.
    public func release(_ handle: UInt32, now: Int64, rate: ConnectionRate?) {
        guard handle != 0 else { return }
        state.withLock { s in
            let i = Int(handle)
            guard i < s.entries.count, s.entries[i].live, s.entries[i].connections > 0 else { return }
            s.entries[i].connections -= 1
            guard s.entries[i].connections == 0 else { return }
            s.idle += 1
            guard let rate else {
                Self.remove(&s, handle)
                return
            }
            Self.refill(&s.entries[i], now: now, rate: rate)
            if s.entries[i].milliTokens >= Int64(rate.count) * 1000 {
                Self.remove(&s, handle)
                return
            }
            if s.idle > maxIdleEntries {
                if now - s.lastSweep >= 1_000 {
                    s.lastSweep = now
                    Self.sweep(&s, now: now, rate: rate)
                }
                // A sweep that emptied the table also shrank it.
                if s.idle > maxIdleEntries && i < s.entries.count && s.entries[i].live { Self.remove(&s, handle) }
            }
        }
    }

    /// Addresses tracked now (open connections or a bucket still refilling), for tests and logs.
    public var trackedAddresses: Int { state.withLock { $0.index.count } }

    /// Open connections counted for `ip`.
    public func connections(of ip: IPAddress) -> Int {
        state.withLock { s in s.index[AddressKey(ip)].map { Int(s.entries[Int($0)].connections) } ?? 0 }
    }

    // MARK: internals (called with the lock held)

    private static func insert(_ s: inout State, _ key: AddressKey) -> UInt32 {
        let handle: UInt32
        if let h = s.free.popLast() {
            handle = h
            s.entries[Int(h)] = Entry(key: key, live: true)
        } else {
            handle = UInt32(s.entries.count)
            s.entries.append(Entry(key: key, live: true))
        }
        s.index[key] = handle
        return handle
    }

    /// Forgets an entry that has no open connection.
    private static func remove(_ s: inout State, _ handle: UInt32) {
        let i = Int(handle)
        s.index[s.entries[i].key] = nil
        s.entries[i].live = false
        s.free.append(handle)
        s.idle -= 1
        // Give memory back after a burst of addresses has gone.
        if s.index.isEmpty {
            s.entries.removeSubrange(1...)
            s.free.removeAll()
        }
    }

    private static func refill(_ e: inout Entry, now: Int64, rate: ConnectionRate) {
        let elapsed = max(0, now - e.stamp)
        let capacity = Int64(rate.count) * 1000
        // count tokens per period: count * 1000 milli-tokens per periodMillis ms.
        let gained = elapsed >= Int64(rate.periodMillis) ? capacity : elapsed * Int64(rate.count) * 1000 / Int64(rate.periodMillis)
        e.milliTokens = min(capacity, e.milliTokens + gained)
        e.stamp = now
    }

    private static func sweep(_ s: inout State, now: Int64, rate: ConnectionRate) {
        for i in 1..<s.entries.count where s.entries[i].live && s.entries[i].connections == 0 {
            refill(&s.entries[i], now: now, rate: rate)
            if s.entries[i].milliTokens >= Int64(rate.count) * 1000 { remove(&s, UInt32(i)) }
            if s.index.isEmpty { return }
        }
    }
}
