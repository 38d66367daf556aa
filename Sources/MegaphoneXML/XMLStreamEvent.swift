/// What a client's XML stream produces, in the vocabulary `xmpp_stream_in` takes from `fxml_stream`:
/// each event reaches the session as `{'$gen_event', Event}`.
public enum XMLStreamEvent: Equatable, Sendable {
    /// `{xmlstreamstart, Name, Attrs}`: the stream header.
    case streamStart(name: [UInt8], attributes: [XMLAttribute])
    /// `{xmlstreamelement, #xmlel{}}`: one complete top-level element (a stanza, `<auth/>`, ...).
    case element(XMLElement)
    /// `{xmlstreamend, Name}`: the client closed its stream.
    case streamEnd(name: [UInt8])
    /// `{xmlstreamcdata, Bin}`: character data between top-level elements (only when the parser is
    /// asked for it: ejabberd 23.01 does nothing with it, so the node does not forward it).
    case streamCData([UInt8])
    /// `{xmlstreamerror, Reason}`: the stream is broken; nothing follows.
    case error(XMLStreamError)
}

/// Why a stream cannot go on. The session turns each into the stream error ejabberd sends.
public enum XMLStreamError: Error, Equatable, Sendable {
    /// Not well-formed XML: expat's error code and text (what fxml reports as `{Code, Text}`).
    /// ejabberd answers `<not-well-formed/>`.
    case notWellFormed(code: Int, text: String)
    /// Something RFC 6120 §11 forbids in XMPP (comment, processing instruction, DTD, an entity
    /// reference other than the five predefined ones). `<restricted-xml/>`.
    case restricted(String)
    /// `max_stanza_size` or a structural bound (depth, attributes, name length) exceeded. fxml's
    /// `<<"XML stanza is too big">>`, which ejabberd answers with `<policy-violation/>`.
    case tooBig

    /// The text ejabberd puts in the stream error.
    public var text: String {
        switch self {
        case .notWellFormed(_, let text): return text
        case .restricted(let text): return text
        case .tooBig: return "XML stanza is too big"
        }
    }

    // expat's codes and texts (XML_Error, XML_ErrorString), as fxml passes them on.
    static let syntax = XMLStreamError.notWellFormed(code: 2, text: "syntax error")
    static let invalidToken = XMLStreamError.notWellFormed(code: 4, text: "not well-formed (invalid token)")
    static let tagMismatch = XMLStreamError.notWellFormed(code: 7, text: "mismatched tag")
    static let duplicateAttribute = XMLStreamError.notWellFormed(code: 8, text: "duplicate attribute")
    static let junkAfterRoot = XMLStreamError.notWellFormed(code: 9, text: "junk after document element")
    static let badCharRef = XMLStreamError.notWellFormed(code: 14, text: "reference to invalid character number")
    static let misplacedXMLDecl = XMLStreamError.notWellFormed(
        code: 17, text: "XML or text declaration not at start of entity")
    static let unboundPrefix = XMLStreamError.notWellFormed(code: 27, text: "unbound prefix")
    static let undeclaringPrefix = XMLStreamError.notWellFormed(code: 28, text: "must not undeclare prefix")
    static let xmlDecl = XMLStreamError.notWellFormed(code: 30, text: "XML declaration not well-formed")
    static let reservedPrefixXML = XMLStreamError.notWellFormed(
        code: 38, text: "reserved prefix (xml) must not be undeclared or bound to another namespace name")
    static let reservedPrefixXMLNS = XMLStreamError.notWellFormed(
        code: 39, text: "reserved prefix (xmlns) must not be declared or undeclared")
    static let reservedNamespace = XMLStreamError.notWellFormed(
        code: 40, text: "prefix must not be bound to one of the reserved namespace names")
}
