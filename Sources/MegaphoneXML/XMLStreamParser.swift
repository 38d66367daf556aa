/// A streaming parser for the XML that XMPP clients send (RFC 6120 §11): one per connection, fed
/// the bytes as they arrive in pieces of any size, giving the events `fxml_stream` gives for the
/// same bytes (see `Namespaces.swift` for fxml's namespace rules).
///
/// It is written for this subset rather than wrapping expat: between stanzas it holds a few bytes
/// of state and a reference to the stream header's namespace context (shared by every connection
/// that sent the usual header); the partial stanza's buffers (`Work`) exist only while a stanza or
/// a token is in progress. Every byte is checked as it arrives: UTF-8, XML characters, names,
/// quoting, references, tag nesting and the bounds in `XMLStreamLimits`; anything XMPP forbids
/// (comments, processing instructions, DTDs, entity references beyond the predefined five) ends
/// the stream with `restricted`. After an error the parser stays failed.
///
/// `feed` stops after each event so that its caller can hand out events one by one (the node
/// stops when a session has no credit left) and keep the remaining bytes.
public struct XMLStreamParser {
    /// Whether stream-level character data (whitespace keepalives between stanzas) comes out as
    /// `streamCData` events. Off in the node: ejabberd 23.01 does nothing with it.
    public var reportsStreamCData: Bool

    var lex: Lex = .start
    /// Open elements, the stream element included.
    var depth: Int32 = 0
    var utf8: UTF8Sequence = UTF8Sequence()
    /// The last content byte was CR: a LF right after it is dropped (line-end normalisation).
    var afterCR = false
    /// `]` seen in a row in content (`]]>` is not allowed there).
    var brackets: UInt8 = 0
    /// The stream element closed in the same tag that opened it (`<stream:stream/>`): its end is
    /// the next event.
    var pendingEnd: [UInt8]? {
        get { rare?.pendingEnd }
        set { rareState.pendingEnd = newValue }
    }
    var failed: XMLStreamError? {
        get { rare?.failed }
        set { rareState.failed = newValue }
    }
    /// What most streams never need, out of line so that an idle parser stays small.
    var rare: Rare? = nil
    /// Bytes since the last event, against `maxStanzaSize`.
    var sinceEvent: Int32 = 0
    var stream: StreamContext? = nil
    var work: Work? = nil

    public init(reportsStreamCData: Bool = false) {
        self.reportsStreamCData = reportsStreamCData
    }

    /// Forgets the stream: the next bytes start a new one (the restart after SASL success).
    public mutating func reset() {
        self = XMLStreamParser(reportsStreamCData: reportsStreamCData)
    }

    /// An error has ended the stream.
    public var hasFailed: Bool { failed != nil }

    /// This stream's header has been parsed (and handed out as `streamStart`) since the start or
    /// the last `reset()`.
    public var hasStreamHeader: Bool { stream != nil }

    /// True when nothing is pending: no partial token or stanza, no buffer held.
    public var isIdle: Bool { work == nil && !utf8.inProgress }

    /// Parses from the start of `bytes` until one event is complete, and returns how many bytes
    /// that took with the event; or all of `bytes` and nil when they complete none. An error is an
    /// event too; after it every call returns the same error having consumed nothing.
    public mutating func feed(_ bytes: UnsafeRawBufferPointer, limits: XMLStreamLimits) -> (consumed: Int, event: XMLStreamEvent?) {
        if let failed { return (0, .error(failed)) }
        if let name = pendingEnd {
            pendingEnd = nil
            return (0, .streamEnd(name: name))
        }
        var i = 0
        while i < bytes.count {
            if !utf8.inProgress {
                let run = fastRun(bytes, at: i, limits)
                if run > 0 {
                    i += run
                    continue
                }
            }
            let b = bytes[i]
            i += 1
            if sinceEvent < Int32.max { sinceEvent += 1 }
            let outcome: Outcome
            if Int(sinceEvent) >= limits.maxStanzaSize {
                outcome = .fail(.tooBig)
            } else {
                outcome = step(b, limits)
            }
            switch outcome {
            case .more:
                continue
            case .event(let event):
                sinceEvent = 0
                releaseIfIdle()
                return (i, event)
            case .eventBefore(let event):
                // The byte starts what follows the event: give it back.
                i -= 1
                sinceEvent = 0
                return (i, event)
            case .fail(let error):
                failed = error
                work = nil
                return (i, .error(error))
            }
        }
        releaseIfIdle()
        return (i, nil)
    }

    /// Stream-level text still held at the end of the input (only with `reportsStreamCData`).
    public mutating func flushStreamCData() -> XMLStreamEvent? {
        guard failed == nil, reportsStreamCData, depth == 1, lex == .content,
              let w = work, !w.text.isEmpty else { return nil }
        var text = w.text
        w.text.removeAll()
        // expat holds a CR at the end of its input until it knows whether a LF follows.
        if afterCR { text.removeLast() }
        releaseIfIdle()
        return text.isEmpty ? nil : .streamCData(text)
    }

    mutating func releaseIfIdle() {
        guard let w = work, lex == .content || lex == .prolog || lex == .epilog,
              w.stack.isEmpty, w.text.isEmpty, !utf8.inProgress else { return }
        _ = w
        work = nil
    }

    var rareState: Rare {
        mutating get {
            if let rare { return rare }
            let made = Rare()
            rare = made
            return made
        }
    }

    var w: Work {
        mutating get {
            if let work { return work }
            let made = Work()
            work = made
            return made
        }
    }
}

/// Where the lexer is. One byte wide.
enum Lex: UInt8 {
    /// Before anything: a BOM or the XML declaration may come.
    case start, afterBOM
    /// Before the stream element (whitespace only).
    case prolog
    /// After `<`.
    case lt
    case startTagName, tagSpace, attrName, attrEq, attrValueStart, attrValue, afterAttrValue, emptySlash
    case endTagName, endTagSpace
    /// After `<!` (in content: `<![CDATA[` is the one allowed form).
    case bang, cdataOpen, cdata
    /// Character data inside an element (or between stanzas, at depth 1).
    case content
    /// `&...;` in content or in an attribute value (`Work.refInAttribute` says which).
    case ref
    /// `<?xml ...?>` at the very start.
    case xmlDecl
    /// After the stream element closed.
    case epilog
}

enum Outcome {
    case more
    case event(XMLStreamEvent)
    case eventBefore(XMLStreamEvent)
    case fail(XMLStreamError)
}

/// An error that ended the stream; the end of a stream element that closed in its own start tag.
final class Rare {
    var failed: XMLStreamError? = nil
    var pendingEnd: [UInt8]? = nil
}

/// The buffers of whatever is in progress: a token, a start tag's attributes, the open elements of
/// a stanza and their text. Dropped between stanzas.
final class Work {
    /// A name being read: an attribute's, an end tag's, the XML declaration's text.
    var token: [UInt8] = []
    /// An entity or character reference being read (an attribute's name is in `token` meanwhile).
    var token2: [UInt8] = []
    var value: [UInt8] = []
    var tag = RawTag()
    var stack: [Frame] = []
    var text: [UInt8] = []
    var quote: UInt8 = 0
    var refInAttribute = false
    /// Progress through a fixed sequence (`CDATA[`, `]]>`, `xml `).
    var matched = 0
    /// The start tag ended with `/>`.
    var selfClosing = false
}
