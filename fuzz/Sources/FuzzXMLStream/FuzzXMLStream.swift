import CFuzzDriver
import MegaphoneXML

/// Fuzzes `XMLStreamParser` as the node drives it: untrusted bytes from a client that has not
/// authenticated, in reads of any size. Byte 0 seeds the read sizes; byte 1's low bit picks tight
/// limits (so that every `tooBig` path is reachable in short inputs); the rest is the stream. The
/// seeds in corpus/FuzzXMLStream/ start with a digit and a newline (even: the usual small limits).
///
/// Each input runs with `reportsStreamCData` off and on, fed whole, in seeded reads and byte by
/// byte. Checks:
/// - the events do not depend on how the bytes were split (consecutive `streamCData` merged);
/// - with `reportsStreamCData` off the events are those with it on, less the `streamCData`;
/// - `feed`'s contract: `consumed` fits the bytes given, and is all of them when no event comes;
///   an event with nothing consumed is an error, the pending end of a self-closed stream header,
///   or stream-level text ended by the `<` given back (never two such in a row); after an error
///   every call gives the same error having consumed nothing, and nothing is flushed;
/// - every event encodes as an Erlang term that decodes to the end into the term expected;
/// - the limits hold: element depth, attributes (fxml's normalisation may add one `xmlns`), name
///   bytes; names and text are valid UTF-8, attribute names are unique, adjacent text is merged;
/// - the parser is idle (holds no buffers) right after a stream header, an element or a stream end;
/// - `reset()` forgets everything: a parser reset after part of the input gives a fresh one's events.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzXMLStream(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    guard let data, size >= 2 else { return 0 }
    let all = Array(UnsafeBufferPointer(start: data, count: size))
    let splitSeed = Int(all[0])
    let limits = all[1] & 1 == 0
        ? XMLStreamLimits(maxStanzaSize: 4096, maxDepth: 16, maxAttributes: 16, maxNameLength: 64)
        : XMLStreamLimits(maxStanzaSize: 200, maxDepth: 4, maxAttributes: 3, maxNameLength: 8)
    let input = Array(all.dropFirst(2))

    var reads: [Int] = []
    var left = input.count
    var k = splitSeed
    while left > 0 {
        let n = min(left, 1 + k % 29)
        reads.append(n)
        left -= n
        k = (k &* 31 &+ 7) & 0xFFFF
    }
    let byteByByte = [Int](repeating: 1, count: input.count)

    var byMode: [[XMLStreamEvent]] = []
    for reportsStreamCData in [false, true] {
        // The events' own checks run on the whole input alone: the other runs must give the same events.
        let whole = run(input, reads: [input.count], limits, reportsStreamCData, checksEvents: true)
        check(run(input, reads: reads, limits, reportsStreamCData) == whole, "events depend on the read sizes")
        check(run(input, reads: byteByByte, limits, reportsStreamCData) == whole, "events differ fed byte by byte")
        check(run(input, reads: [input.count], limits, reportsStreamCData, resetAfter: reads.first ?? 0) == whole,
              "reset() leaves state behind")
        byMode.append(whole)
    }
    let withoutText = byMode[1].filter { if case .streamCData = $0 { return false } else { return true } }
    check(byMode[0] == withoutText, "reportsStreamCData changes other events than streamCData")
    return 0
}

/// Feeds `input` in `reads` as the node does (each read fed until it gives no event), checking
/// `feed`'s contract and every event, and returns the events with adjacent `streamCData` merged.
/// With `resetAfter`, first feeds that many bytes to the parser and resets it.
func run(_ input: [UInt8], reads: [Int], _ limits: XMLStreamLimits, _ reportsStreamCData: Bool,
         checksEvents: Bool = false, resetAfter: Int? = nil) -> [XMLStreamEvent] {
    var parser = XMLStreamParser(reportsStreamCData: reportsStreamCData)
    var events: [XMLStreamEvent] = []
    input.withUnsafeBytes { bytes in
        if let resetAfter {
            var at = 0
            while at < resetAfter {
                let (used, event) = parser.feed(UnsafeRawBufferPointer(rebasing: bytes[at..<resetAfter]), limits: limits)
                at += used
                if event == nil || used == 0 { break }
            }
            parser.reset()
            check(parser.isIdle && !parser.hasFailed, "reset() leaves a pending state")
        }
        var offset = 0
        for n in reads {
            let end = offset + n
            var at = offset
            offset = end
            var emptyEvents = 0
            while true {
                let given = end - at
                let (used, event) = parser.feed(UnsafeRawBufferPointer(rebasing: bytes[at..<end]), limits: limits)
                check(used >= 0 && used <= given, "consumed more than given")
                at += used
                guard let event else {
                    check(used == given, "no event, yet bytes left unconsumed")
                    break
                }
                if checksEvents { checkEvent(event, limits) }
                if used == 0 {
                    switch event {
                    case .error, .streamEnd, .streamCData: break
                    default: check(false, "an event with nothing consumed")
                    }
                    emptyEvents += 1
                    check(emptyEvents <= 1, "two events in a row with nothing consumed")
                } else {
                    emptyEvents = 0
                }
                if case .error(let error) = event {
                    check(parser.hasFailed, "an error, yet hasFailed is false")
                    for rest in [bytes[at..<end], bytes[end...], bytes[0..<0]] {
                        let (again, same) = parser.feed(UnsafeRawBufferPointer(rebasing: rest), limits: limits)
                        check(again == 0 && same == .error(error), "after an error, feed gives something else")
                    }
                    check(parser.flushStreamCData() == nil, "text flushed after an error")
                    add(event, to: &events)
                    return
                }
                check(!parser.hasFailed, "hasFailed without an error")
                switch event {
                case .streamStart, .element, .streamEnd:
                    check(parser.isIdle, "not idle after a complete event")
                case .streamCData:
                    check(reportsStreamCData, "streamCData although not asked for")
                case .error:
                    break
                }
                add(event, to: &events)
            }
        }
        if let event = parser.flushStreamCData() {
            check(reportsStreamCData, "streamCData flushed although not asked for")
            guard case .streamCData = event else { check(false, "flush gave another event"); return }
            if checksEvents { checkEvent(event, limits) }
            check(parser.flushStreamCData() == nil, "text flushed twice")
            add(event, to: &events)
        }
    }
    return events
}

func add(_ event: XMLStreamEvent, to events: inout [XMLStreamEvent]) {
    if case .streamCData(let more) = event, case .streamCData(let text)? = events.last {
        events[events.count - 1] = .streamCData(text + more)
    } else {
        events.append(event)
    }
}

// MARK: - One event's checks

func checkEvent(_ event: XMLStreamEvent, _ limits: XMLStreamLimits) {
    switch event {
    case .streamStart(let name, let attributes):
        checkName(name, limits)
        checkAttributes(attributes, limits, extra: 0)
    case .element(let element):
        checkElement(element, limits, height: 1)
    case .streamEnd(let name):
        checkName(name, limits)
    case .streamCData(let text):
        check(!text.isEmpty, "empty streamCData")
        checkUTF8(text)
    case .error:
        break
    }
    var bytes: [UInt8] = []
    ExternalTermFormat.encode(event, into: &bytes)
    var reader = TermReader(bytes: bytes)
    let decoded = reader.term()
    check(reader.at == bytes.count, "the encoding goes on past its term")
    check(decoded == Term(event), "the encoding decodes to another term")
}

/// `height` counts this element: a stanza is at depth 2, below the stream element.
func checkElement(_ element: XMLElement, _ limits: XMLStreamLimits, height: Int) {
    check(height + 1 <= limits.maxDepth, "an element deeper than maxDepth")
    checkName(element.name, limits)
    checkAttributes(element.attributes, limits, extra: 1)
    var previousWasText = false
    for child in element.children {
        switch child {
        case .element(let e):
            checkElement(e, limits, height: height + 1)
            previousWasText = false
        case .cdata(let text):
            check(!text.isEmpty, "an empty text child")
            check(!previousWasText, "adjacent text children not merged")
            checkUTF8(text)
            previousWasText = true
        }
    }
}

/// `extra`: fxml's normalisation gives an element an `xmlns` it did not write when its namespace
/// differs from its parent's.
func checkAttributes(_ attributes: [XMLAttribute], _ limits: XMLStreamLimits, extra: Int) {
    check(attributes.count <= limits.maxAttributes + extra, "more attributes than maxAttributes")
    for (i, a) in attributes.enumerated() {
        checkName(a.name, limits)
        checkUTF8(a.value)
        check(!attributes[..<i].contains { $0.name == a.name }, "two attributes with one name")
    }
}

func checkName(_ name: [UInt8], _ limits: XMLStreamLimits) {
    check(!name.isEmpty, "an empty name")
    check(name.count <= limits.maxNameLength, "a name longer than maxNameLength")
    checkUTF8(name)
}

func checkUTF8(_ bytes: [UInt8]) {
    check(String(validating: bytes, as: UTF8.self) != nil, "bytes that are not UTF-8 in an event")
}

// MARK: - Erlang terms, decoded from nothing but their bytes

/// The few term types `ExternalTermFormat` writes.
indirect enum Term: Equatable {
    case tuple([Term])
    case list([Term])
    case binary([UInt8])
    case atom(String)
    case int(Int)

    /// The term an event must encode to, built without `ExternalTermFormat`.
    init(_ event: XMLStreamEvent) {
        switch event {
        case .streamStart(let name, let attributes):
            self = .tuple([.atom("xmlstreamstart"), .binary(name), Term(attributes)])
        case .element(let element):
            self = .tuple([.atom("xmlstreamelement"), Term(element)])
        case .streamEnd(let name):
            self = .tuple([.atom("xmlstreamend"), .binary(name)])
        case .streamCData(let text):
            self = .tuple([.atom("xmlstreamcdata"), .binary(text)])
        case .error(let error):
            let reason: Term
            switch error {
            case .notWellFormed(let code, let text): reason = .tuple([.int(code), .binary(Array(text.utf8))])
            case .restricted(let text): reason = .tuple([.atom("restricted_xml"), .binary(Array(text.utf8))])
            case .tooBig: reason = .binary(Array("XML stanza is too big".utf8))
            }
            self = .tuple([.atom("xmlstreamerror"), reason])
        }
    }

    init(_ element: XMLElement) {
        let children: [Term] = element.children.map {
            switch $0 {
            case .element(let e): return Term(e)
            case .cdata(let text): return .tuple([.atom("xmlcdata"), .binary(text)])
            }
        }
        self = .tuple([.atom("xmlel"), .binary(element.name), Term(element.attributes), .list(children)])
    }

    init(_ attributes: [XMLAttribute]) {
        self = .list(attributes.map { .tuple([.binary($0.name), .binary($0.value)]) })
    }
}

/// Decodes a term or traps: any byte it does not expect is a broken encoding.
struct TermReader {
    let bytes: [UInt8]
    var at = 0

    mutating func byte() -> UInt8 {
        check(at < bytes.count, "the encoding ends inside a term")
        at += 1
        return bytes[at - 1]
    }

    mutating func be32() -> Int {
        var v = 0
        for _ in 0..<4 { v = v << 8 | Int(byte()) }
        return v
    }

    mutating func take(_ n: Int) -> [UInt8] {
        check(n <= bytes.count - at, "a length past the end of the encoding")
        at += n
        return Array(bytes[(at - n)..<at])
    }

    mutating func term() -> Term {
        switch byte() {
        case 97: return .int(Int(byte()))
        case 98: return .int(Int(Int32(truncatingIfNeeded: UInt32(be32()))))
        case 104:
            let arity = Int(byte())
            return .tuple((0..<arity).map { _ in term() })
        case 106: return .list([])
        case 108:
            let count = be32()
            check(count > 0, "a list header for no elements (the empty list is NIL_EXT)")
            let elements = (0..<count).map { _ in term() }
            check(byte() == 106, "an improper list")
            return .list(elements)
        case 109: return .binary(take(be32()))
        case 119:
            let name = take(Int(byte()))
            guard let text = String(validating: name, as: UTF8.self) else { check(false, "an atom that is not UTF-8"); return .atom("") }
            return .atom(text)
        default:
            check(false, "an unknown term tag")
            return .list([])
        }
    }
}

func check(_ condition: Bool, _ what: StaticString) {
    if !condition { fatalError("fuzz invariant broken: \(what)") }
}

@_cdecl("FuzzXMLStream_main")
public func fuzzXMLStreamMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    var argc = argc
    var argv = argv
    return LLVMFuzzerRunDriver(&argc, &argv) { fuzzXMLStream($0, $1) }
}
