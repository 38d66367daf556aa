import Synchronization

/// Bytes on their way between threads, with a bound: what one side added and the other has not taken
/// yet. A node has two, one per direction (`NodeContext`):
///
/// - `toErlang`: client bytes from the reactors to the distribution thread. A reactor adds a chunk when
///   it hands one over; the distribution thread takes it off once the kernel took it for its node (or
///   it was dropped with the node). Past `limit` the reactors read no client socket: the bytes stay
///   in the kernel, whose windows push back on the clients, until the distribution thread has brought
///   the budget under half the limit and asks them to go on (`ReactorCommand.resumeReads`). This is
///   what holds when ejabberd, or the link to it, is slower than the clients.
/// - `toClients`: put_data and send_data bytes from the distribution thread to the reactors. Past
///   `limit` the distribution thread reads no request, so TCP holds ejabberd back, until a reactor's
///   take brings the bytes under the limit and wakes it (`roomSignal`).
public final class ByteBudget: Sendable {
    public let limit: Int
    private let bytes = Atomic<Int>(0)
    private let peak = Atomic<Int>(0)
    /// Set by a reactor that left a socket unread; cleared by the `resumeReads` it leads to.
    private let starving = Atomic<Bool>(false)
    /// How many times a reactor left an armed socket unread because the queue was full.
    let pausedReads = Atomic<Int>(0)
    /// Signalled by `taken` when it brings the bytes back under `limit`, for a side that stopped
    /// adding while the queue was full and sleeps in poll() meanwhile (the distribution thread, for
    /// the put_data/send_data bytes it posts to the reactors). Nil where nobody sleeps on it.
    let roomSignal: EventFD?

    /// `roomSignal`: for a producer that waits in poll() while the queue is full.
    init(limit: Int, roomSignal: EventFD? = nil) {
        precondition(limit > 0, "the queue limit must be positive")
        self.limit = limit
        self.roomSignal = roomSignal
    }

    public convenience init(limit: Int) {
        self.init(limit: limit, roomSignal: nil)
    }

    public var queuedBytes: Int { bytes.load(ordering: .relaxed) }
    /// The most bytes ever queued: at most `limit` plus one chunk per reactor.
    public var peakBytes: Int { peak.load(ordering: .relaxed) }
    public var pausedReadCount: Int { pausedReads.load(ordering: .relaxed) }

    /// Reactor: a chunk of `n` bytes was handed over.
    func added(_ n: Int) {
        let now = bytes.add(n, ordering: .relaxed).newValue
        var seen = peak.load(ordering: .relaxed)
        while now > seen {
            let (exchanged, original) = peak.compareExchange(expected: seen, desired: now, ordering: .relaxed)
            if exchanged { break }
            seen = original
        }
    }

    /// The consumer: `n` bytes left (a chunk sent or dropped with its node by the distribution thread; a
    /// put_data or send_data carried out by a reactor).
    func taken(_ n: Int) {
        let now = bytes.subtract(n, ordering: .sequentiallyConsistent).newValue
        // Only the take that crosses the limit signals: a producer that saw the queue full cannot
        // miss it (the crossing comes after what it saw), and the hot path costs no write otherwise.
        if let roomSignal, now < limit, now + n >= limit { roomSignal.signal() }
    }

    /// Reactor, before reading a client socket. `starving` is set before the second look, so the
    /// distribution thread, which looks at the bytes after clearing it, cannot miss a reactor that
    /// stopped: either it sees the flag, or the reactor sees the bytes it took off.
    func mayRead() -> Bool {
        if bytes.load(ordering: .relaxed) < limit { return true }
        starving.store(true, ordering: .sequentiallyConsistent)
        if bytes.load(ordering: .sequentiallyConsistent) < limit { return true }
        pausedReads.add(1, ordering: .relaxed)
        return false
    }

    /// Distribution thread, after each batch: true once when stopped reactors should read again.
    func shouldResume() -> Bool {
        guard starving.load(ordering: .sequentiallyConsistent),
              bytes.load(ordering: .sequentiallyConsistent) < limit / 2 else { return false }
        return starving.exchange(false, ordering: .sequentiallyConsistent)
    }
}
