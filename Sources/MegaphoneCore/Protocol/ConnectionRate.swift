/// `connection_rate_per_ip` of `start`: a token bucket per client address, `count` tokens refilled
/// evenly over `periodMillis`; every connection attempt takes one (`AddressLimiter` keeps the buckets).
public struct ConnectionRate: Equatable, Sendable {
    public var count: Int
    public var periodMillis: Int

    public init(count: Int, periodMillis: Int) {
        self.count = count
        self.periodMillis = periodMillis
    }
}
