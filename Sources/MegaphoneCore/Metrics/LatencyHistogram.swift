import Synchronization

/// A latency histogram with fixed buckets, as Prometheus's `histogram` type wants it: cumulative
/// counts per upper bound, the sum and the count. Observed by one thread (the distribution thread),
/// read by another (the metrics thread) with relaxed atomics: a scrape may see one observation in
/// the count and not yet in its bucket, which Prometheus's `histogram_quantile` tolerates.
public final class LatencyHistogram: Sendable {
    /// Upper bounds in nanoseconds: 10 µs to 1 s, about three per decade.
    public static let boundsNanos: [Int64] = [
        10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
        1_000_000, 2_500_000, 5_000_000, 10_000_000, 25_000_000, 50_000_000,
        100_000_000, 250_000_000, 500_000_000, 1_000_000_000,
    ]

    /// Per bucket (not cumulative), the last one for everything above the largest bound.
    private let buckets: [AtomicCell] = (0...LatencyHistogram.boundsNanos.count).map { _ in AtomicCell() }
    private let sumNanos = Atomic<Int>(0)

    public init() {}

    /// Records `count` observations of `nanos` each (a batch of inputs read in one reactor turn and
    /// sent in one distribution turn share their latency).
    public func observe(nanos: Int64, count: Int = 1) {
        guard count > 0 else { return }
        let value = max(0, nanos)
        var i = 0
        while i < Self.boundsNanos.count && value > Self.boundsNanos[i] { i += 1 }
        buckets[i].value.add(count, ordering: .relaxed)
        sumNanos.add(Int(value) &* count, ordering: .relaxed)
    }

    /// Cumulative counts, one per bound and then `+Inf`; the sum in nanoseconds; the count.
    public func snapshot() -> (cumulative: [Int], sumNanos: Int, count: Int) {
        var running = 0
        let cumulative = buckets.map { cell -> Int in
            running += cell.value.load(ordering: .relaxed)
            return running
        }
        // +Inf must equal the count: take the count from the buckets, read in one pass.
        return (cumulative, sumNanos.load(ordering: .relaxed), running)
    }
}
