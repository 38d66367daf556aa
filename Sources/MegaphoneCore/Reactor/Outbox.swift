/// The end of the path towards Erlang: what one reactor turn has for the distribution thread (client
/// chunks, notifications, `drained`), posted in one go at the end of the turn so that the distribution
/// thread wakes once per turn, not per event. The distribution thread (`DistributionLink`) encodes each
/// and writes it to its node.
struct Outbox {
    private var pending: [ReactorOutput] = []

    var isEmpty: Bool { pending.isEmpty }

    /// Queues `event` for `pid`; nothing for `.none` (a connection nobody has claimed yet).
    mutating func emit(to pid: PidRef, _ event: Event) {
        guard !pid.isNone else { return }
        pending.append(.send(to: pid, event))
    }

    mutating func append(_ output: ReactorOutput) {
        pending.append(output)
    }

    /// Hands everything queued to the distribution thread's mailbox.
    mutating func post(to mailbox: Mailbox<ReactorOutput>) {
        guard !pending.isEmpty else { return }
        mailbox.post(contentsOf: pending)
        pending.removeAll(keepingCapacity: true)
    }
}
