import Synchronization

/// The Erlang nodes that are behind on client bytes: the distribution thread holds more than a
/// share of `--dist-queue-limit` written for one of them that its kernel has not taken (a frozen or
/// slow ejabberd node). The reactors read no connection owned by such a node until it catches up,
/// so that node alone is held back; without it one frozen node filled the shared budget and every
/// client of every other ejabberd node waited for it to be dropped at net_ticktime.
///
/// Written by the distribution thread, read by the reactors before each read. Nearly always empty:
/// then a read costs one relaxed load and no lock.
public final class NodeBacklog: Sendable {
    private let behindCount = Atomic<Int>(0)
    private let behind = Locked<Set<UInt16>>([])

    public init() {}

    /// Reactor: whether connections owned by `node` must wait.
    func isBehind(_ node: UInt16) -> Bool {
        guard behindCount.load(ordering: .acquiring) > 0 else { return false }
        return behind.withLock { $0.contains(node) }
    }

    /// Distribution thread: marks `node` behind or caught up; true when that changed.
    @discardableResult
    func set(_ node: UInt16, behind isBehind: Bool) -> Bool {
        let changed = behind.withLock { set in
            isBehind ? set.insert(node).inserted : set.remove(node) != nil
        }
        if changed { behindCount.add(isBehind ? 1 : -1, ordering: .releasing) }
        return changed
    }

    public var count: Int { behindCount.load(ordering: .relaxed) }
}
