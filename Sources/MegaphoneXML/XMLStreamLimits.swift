/// Bounds on one client's stream, enforced as the bytes arrive. Crossing any of them is
/// `XMLStreamError.tooBig`, which ejabberd answers with `<policy-violation/>` as it does for
/// `max_stanza_size`.
public struct XMLStreamLimits: Equatable, Sendable {
    /// The session's `max_stanza_size`: bytes from the end of one event to the end of the next
    /// (the stream header counts as one). `Int.max` for infinity.
    public var maxStanzaSize: Int
    /// Elements open at once, the stream element included.
    public var maxDepth: Int
    /// Attributes (namespace declarations included) on one element.
    public var maxAttributes: Int
    /// Bytes in one element or attribute name, or in an entity reference.
    public var maxNameLength: Int

    public init(maxStanzaSize: Int = 65536, maxDepth: Int = 128, maxAttributes: Int = 128, maxNameLength: Int = 1024) {
        self.maxStanzaSize = maxStanzaSize
        self.maxDepth = maxDepth
        self.maxAttributes = maxAttributes
        self.maxNameLength = maxNameLength
    }
}
