/// The session's shaper, applied where the bytes are read: a token bucket of `rate` bytes a second
/// holding at most `burst`, as ejabberd's `p1_shaper` paces its own listener's reads. A parsed
/// connection's session has no socket to pace, so `change_shaper` sends the node its rate
/// (`{shaper, ConnId, {Rate, Burst}}`) and the node reads no faster; the rest waits in the kernel.
struct ReadShaper: Equatable {
    var rate: Int
    var burst: Int
    var tokens: Int
    var last: Int64

    init(rate: Int, burst: Int, now: Int64) {
        self.rate = Swift.max(1, rate)
        self.burst = Swift.max(self.rate / 10, burst, 1)
        tokens = self.burst
        last = now
    }

    /// Bytes that may be read now.
    mutating func allowance(now: Int64) -> Int {
        if now > last {
            tokens = Swift.min(burst, tokens + Int((now - last)) * rate / 1000)
            last = now
        }
        return tokens
    }

    mutating func spend(_ bytes: Int) { tokens -= bytes }

    /// When enough tokens for a worthwhile read (a few KB, or the whole burst if smaller) will be
    /// there.
    func resumeAt(now: Int64) -> Int64 {
        let want = Swift.min(burst, 4096)
        let missing = Swift.max(1, want - tokens)
        return now + Swift.max(1, Int64((missing * 1000 + rate - 1) / rate))
    }
}
