/// The end of the path towards Erlang: what one reactor turn has for the distribution thread (client
/// chunks, notifications, `drained`), posted in one go at the end of the turn so that the distribution
/// thread wakes once per turn, not per event. The distribution thread (`DistributionLink`) encodes each
/// and writes it to its node.
///
/// The turn's client input also gets a `clientInput` marker with the time of its first read, from
/// which the distribution thread measures read-to-send latency (`megaphone_read_to_send_seconds`):
/// one clock read per turn that read anything, none per chunk.
struct Outbox {
    private var pending: [ReactorOutput] = []
    private var inputs = 0
    private var firstInputAt: Int64 = 0

    var isEmpty: Bool { pending.isEmpty }

    /// Queues `event` for `pid`; nothing for `.none` (a connection nobody has claimed yet).
    mutating func emit(to pid: PidRef, _ event: Event) {
        guard !pid.isNone else { return }
        if event.clientBytes > 0 {
            if inputs == 0 { firstInputAt = monotonicNanos() }
            inputs += 1
        }
        pending.append(.send(to: pid, event))
    }

    mutating func append(_ output: ReactorOutput) {
        pending.append(output)
    }

    /// Hands everything queued to the distribution thread's mailbox.
    mutating func post(to mailbox: Mailbox<ReactorOutput>) {
        guard !pending.isEmpty else { return }
        if inputs > 0 {
            pending.append(.clientInput(readAt: firstInputAt, count: inputs))
            inputs = 0
        }
        mailbox.post(contentsOf: pending)
        pending.removeAll(keepingCapacity: true)
    }
}
