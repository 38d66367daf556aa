/// A pid as the reactors keep it: 16 bytes, with the node's name interned in `NodeNames`.
///
/// ei's `erlang_pid` carries the node name inline (over a kilobyte); a connection table entry can't.
/// `node == 0` means "no pid".
public struct PidRef: Hashable, Sendable {
    public var node: UInt16
    public var num: UInt32
    public var serial: UInt32
    public var creation: UInt32

    public init(node: UInt16, num: UInt32, serial: UInt32, creation: UInt32) {
        self.node = node
        self.num = num
        self.serial = serial
        self.creation = creation
    }

    public static let none = PidRef(node: 0, num: 0, serial: 0, creation: 0)

    public var isNone: Bool { node == 0 }
}

/// Interns node names as small integers. Owned by the distribution thread; reactors only compare indexes.
public final class NodeNames {
    private var names: [String] = [""]
    private var indexes: [String: UInt16] = [:]
    /// Nearly every pid in a request names the same node as the one before: compare, don't hash.
    private var last: (name: String, index: UInt16)? = nil

    public init() {}

    /// The index for `name`, adding it on first sight. Past 65,535 distinct names the table is full and
    /// pids of new nodes are refused (nil).
    public func intern(_ name: String) -> UInt16? {
        if let last, last.name == name { return last.index }
        if let index = indexes[name] {
            last = (name, index)
            return index
        }
        guard names.count <= Int(UInt16.max) else { return nil }
        let index = UInt16(names.count)
        names.append(name)
        indexes[name] = index
        return index
    }

    public func index(of name: String) -> UInt16? { indexes[name] }

    public func name(of index: UInt16) -> String? {
        index > 0 && Int(index) < names.count ? names[Int(index)] : nil
    }

    public func pidRef(_ pid: DecodedPid) -> PidRef? {
        guard let node = intern(pid.node) else { return nil }
        return PidRef(node: node, num: pid.num, serial: pid.serial, creation: pid.creation)
    }
}
