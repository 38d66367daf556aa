/// The session's shaper, applied where the bytes are read: a token bucket of `rate` bytes a second
/// holding at most `burst`, as ejabberd's `p1_shaper` paces its own listener's reads. A parsed
/// connection's session has no socket to pace, so `change_shaper` sends the node its rate
/// (`{shaper, ConnId, {Rate, Burst}}`) and the node reads no faster; the rest waits in the kernel.
///
/// 24 bytes (every parsed session has a shaper: ejabberd's `c2s_shaper`): rates and tokens in 32
/// bits (up to 2 GB/s), the clock in milliseconds.
struct ReadShaper: Equatable {
    private var rate: Int32
    private var burst: Int32
    private var tokens: Int32
    private var last: Int64

    init(rate: Int, burst: Int, now: Int64) {
        let r = Swift.min(Swift.max(1, rate), Int(Int32.max))
        self.rate = Int32(r)
        self.burst = Int32(Swift.min(Swift.max(r / 10, burst, 1), Int(Int32.max)))
        tokens = self.burst
        last = now
    }

    /// Bytes that may be read now.
    mutating func allowance(now: Int64) -> Int {
        if now > last {
            let refill = Swift.min(Int64(burst), (now - last) * Int64(rate) / 1000)
            tokens = Int32(Swift.min(Int64(burst), Int64(tokens) + refill))
            last = now
        }
        return Int(tokens)
    }

    mutating func spend(_ bytes: Int) { tokens = Int32(Swift.max(Int64(Int32.min), Int64(tokens) - Int64(bytes))) }

    /// When enough tokens for a worthwhile read (a few KB, or the whole burst if smaller) will be
    /// there.
    func resumeAt(now: Int64) -> Int64 {
        let want = Swift.min(Int64(burst), 4096)
        let missing = Swift.max(1, want - Int64(tokens))
        return now + Swift.max(1, (missing * 1000 + Int64(rate) - 1) / Int64(rate))
    }
}
