/// Open announced connections by the node of the process they belong to: their owner once it has
/// asked for data, the controller they were announced to until then. The reactors keep it as
/// connections are announced, claimed and closed; `least_sessions` reads it to pick a controller and
/// `stats` reports it per controller node.
///
/// Keyed by node, not by controller pid: a controller that is replaced by a new `start` from the same
/// node (the module restarted there) takes over the sessions of that node, which still run there.
/// Touched once per login and once per close, never per message: a lock is cheap enough.
public final class SessionCounts: Sendable {
    private let counts = Locked<[UInt16: Int]>([:])

    public init() {}

    func added(node: UInt16) {
        counts.withLock { $0[node, default: 0] += 1 }
    }

    func removed(node: UInt16) {
        counts.withLock { counts in
            let left = counts[node, default: 0] - 1
            counts[node] = left > 0 ? left : nil
        }
    }

    func moved(from: UInt16, to: UInt16) {
        guard from != to else { return }
        counts.withLock { counts in
            let left = counts[from, default: 0] - 1
            counts[from] = left > 0 ? left : nil
            counts[to, default: 0] += 1
        }
    }

    public func count(node: UInt16) -> Int {
        counts.withLock { $0[node, default: 0] }
    }

    /// The counts of `nodes`, in that order, read under one lock.
    public func counts(of nodes: [UInt16]) -> [Int] {
        counts.withLock { counts in nodes.map { counts[$0, default: 0] } }
    }
}
