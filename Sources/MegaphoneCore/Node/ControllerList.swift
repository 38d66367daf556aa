/// The controllers attached to the node, at most one per Erlang node, in the order they attached.
/// Owned by the distribution thread; `ControllerSet` is the snapshot the reactors get.
///
/// An ejabberd cluster attaches every Megaphone node from every ejabberd node (they all read the same
/// `modules:`), so a `start` from a new node adds a controller, and a `start` again from the same
/// node (the module restarted or reloaded there) replaces that node's entry in place.
public struct ControllerList: Equatable, Sendable {
    public private(set) var pids: [PidRef] = []

    public init() {}

    public var isEmpty: Bool { pids.isEmpty }
    public var count: Int { pids.count }

    public func contains(node: UInt16) -> Bool { pids.contains { $0.node == node } }

    /// Whether a controller other than `node`'s is attached: the configuration is then shared.
    public func hasOthers(than node: UInt16) -> Bool { pids.contains { $0.node != node } }

    public enum Attached: Equatable, Sendable {
        case added
        /// The node's previous controller, now replaced (possibly by the same pid).
        case replaced(PidRef)
    }

    /// Adds `pid` as its node's controller, replacing the one that node had.
    @discardableResult
    public mutating func attach(_ pid: PidRef) -> Attached {
        if let i = pids.firstIndex(where: { $0.node == pid.node }) {
            let old = pids[i]
            pids[i] = pid
            return .replaced(old)
        }
        pids.append(pid)
        return .added
    }

    /// Removes `node`'s controller; returns it, nil when that node had none.
    @discardableResult
    public mutating func detach(node: UInt16) -> PidRef? {
        guard let i = pids.firstIndex(where: { $0.node == node }) else { return nil }
        return pids.remove(at: i)
    }
}
