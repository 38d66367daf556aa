/// How this node names its connections to Erlang: each ConnId is an Erlang reference minted by the node
/// (node name, creation, and the ID words Reactor, SeqLow, SeqHigh; the shell prints
/// `#Ref<N.SeqHigh.SeqLow.Reactor>`), so no connection of another Megaphone node, or of an earlier or
/// later run of this one, can ever have the same ConnId.
///
/// A reference carries its node's name and creation. ConnIds that were plain integers numbered every
/// node's connections from the same start: a `tcp_closed` that reached a controller serving two nodes
/// ended the session with the same number on the other node, and after a restart a session waiting for
/// XEP-0198 resumption held the number of a new client. With references both are impossible by
/// construction, and the node itself refuses a request that names a connection of another incarnation
/// (its creation differs) as an unknown connection.
///
/// Inside the node a connection keeps its `UInt64` id (sequence << 8 | reactor index); only the wire
/// form changes. The reference's three ID words are the reactor index (kept below 2^18, the range
/// Erlang's own first word has), then the sequence's low and high 32 bits.
public struct ConnectionRefs: Sendable {
    /// `NEWER_REFERENCE_EXT`, the ID word count (3), the node name atom and the creation: the same for
    /// every ConnId of this node, encoded once.
    private let prefix: [UInt8]
    private let node: [UInt8]
    public let creation: UInt32

    /// The most sequence numbers a reactor can give out: 56 bits, as the internal id holds them.
    static let maxSequence: UInt64 = 1 << 56 - 1

    /// `node` is the full node name (`megaphone@host`), `creation` the one the node's own pid carries.
    public init(node: String, creation: UInt32) {
        self.node = Array(node.utf8.prefix(255))
        self.creation = creation
        var prefix: [UInt8] = [ExternalTag.newerReference, 0, 3, ExternalTag.smallAtomUTF8, UInt8(self.node.count)]
        prefix += self.node
        prefix += Self.bigEndian(creation)
        self.prefix = prefix
    }

    /// Appends `id` as a reference. Allocates nothing: it runs for every chunk a client sends.
    public func encode(_ id: UInt64, into e: TermEncoder) {
        e.raw(prefix)
        var words = (UInt32(id & 0xFF).bigEndian, UInt32(truncatingIfNeeded: id >> 8).bigEndian,
                     UInt32(truncatingIfNeeded: id >> 40).bigEndian)
        withUnsafeBytes(of: &words) { e.raw($0) }
    }

    /// The internal id of a reference this node minted in this run; nil for any other reference (another
    /// node's, an earlier run's, or one this node never gave out).
    public func id(of ref: DecodedReference, in buffer: UnsafeRawBufferPointer) -> UInt64? {
        guard ref.creation == creation, ref.idCount == 3, ref.ids.0 <= 0xFF, ref.ids.2 <= 0xFF_FFFF,
              ref.node.count == node.count
        else { return nil }
        let sameNode = node.withUnsafeBytes { mine in
            mine.elementsEqual(UnsafeRawBufferPointer(rebasing: buffer[ref.node]))
        }
        guard sameNode else { return nil }
        let id = UInt64(ref.ids.2) << 40 | UInt64(ref.ids.1) << 8 | UInt64(ref.ids.0)
        // Sequence numbers start at 1: id 0..255 was never given out.
        return id > 0xFF ? id : nil
    }

    private static func bigEndian(_ v: UInt32) -> [UInt8] {
        [UInt8(v >> 24), UInt8(v >> 16 & 0xFF), UInt8(v >> 8 & 0xFF), UInt8(v & 0xFF)]
    }
}

/// A reference as it arrived: where its node name lies in the buffer, its creation and its first three
/// ID words (`idCount` says how many it had).
public struct DecodedReference: Sendable {
    public var node: Range<Int>
    public var creation: UInt32
    public var idCount: Int
    public var ids: (UInt32, UInt32, UInt32)
}
