import Synchronization

/// The controllers a new connection may be announced to (at most one per Erlang node, in the order
/// they attached) and the policy that picks one. Made by the distribution thread on every change and
/// shared, through `ReactorConfig`, by every reactor: `choose()` may be called from any thread.
public final class ControllerSet: Sendable {
    public let controllers: [PidRef]
    public let balance: Balance
    let sessions: SessionCounts
    /// Turns taken: round robin's position, and the tie-break of least_sessions. Shared by the
    /// reactors so that the turn goes round the whole node, not round each reactor.
    private let turns = Atomic<Int>(0)

    public init(controllers: [PidRef], balance: Balance, sessions: SessionCounts) {
        self.controllers = controllers
        self.balance = balance
        self.sessions = sessions
    }

    /// The controller to announce the next connection to; nil when none is attached.
    public func choose() -> PidRef? {
        switch controllers.count {
        case 0: return nil
        case 1: return controllers[0]
        default:
            let turn = turns.add(1, ordering: .relaxed).oldValue
            let counts = balance == .leastSessions ? sessions.counts(of: controllers.map(\.node)) : []
            return controllers[Self.pick(count: controllers.count, balance: balance, sessions: counts, turn: turn)]
        }
    }

    /// The index of the controller to take among `count` (> 0): the turn's for round robin; for
    /// least_sessions the one with the fewest `sessions`, ties broken by the turn so that equally
    /// loaded controllers take new connections alternately.
    static func pick(count: Int, balance: Balance, sessions: [Int], turn: Int) -> Int {
        precondition(count > 0, "pick needs at least one controller")
        let start = Int(UInt(bitPattern: turn) % UInt(count))
        guard balance == .leastSessions, sessions.count == count else { return start }
        var best = start
        for step in 1..<count {
            let i = (start + step) % count
            if sessions[i] < sessions[best] { best = i }
        }
        return best
    }
}
