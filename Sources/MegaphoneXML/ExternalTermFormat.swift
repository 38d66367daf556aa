/// Writes stream events as Erlang external terms (the body of `term_to_binary`, without the leading
/// version byte), so they decode to exactly the terms `fxml_stream` sends: binaries for names,
/// values and text, `{xmlel, ...}` and `{xmlcdata, ...}` tuples, proper lists.
///
/// Pure Swift, no `ei`: the parser's tests, tools and fuzz target use it without a C node, and the
/// node splices the bytes into its messages as they are.
public enum ExternalTermFormat {
    static let smallTuple: UInt8 = 104
    static let nilTag: UInt8 = 106
    static let listTag: UInt8 = 108
    static let binaryTag: UInt8 = 109
    static let smallAtomUTF8: UInt8 = 119
    static let smallInteger: UInt8 = 97
    static let integer: UInt8 = 98

    public static func encode(_ event: XMLStreamEvent, into out: inout [UInt8]) {
        switch event {
        case .streamStart(let name, let attributes):
            tuple(3, &out); atom("xmlstreamstart", &out); binary(name, &out); encode(attributes, &out)
        case .element(let element):
            tuple(2, &out); atom("xmlstreamelement", &out); encode(element, &out)
        case .streamEnd(let name):
            tuple(2, &out); atom("xmlstreamend", &out); binary(name, &out)
        case .streamCData(let text):
            tuple(2, &out); atom("xmlstreamcdata", &out); binary(text, &out)
        case .error(let error):
            tuple(2, &out); atom("xmlstreamerror", &out); encode(error, &out)
        }
    }

    /// `{Code, Text}`, `{restricted_xml, Text}` or `<<"XML stanza is too big">>`.
    static func encode(_ error: XMLStreamError, _ out: inout [UInt8]) {
        switch error {
        case .notWellFormed(let code, let text):
            tuple(2, &out); int(code, &out); binary(Array(text.utf8), &out)
        case .restricted(let text):
            tuple(2, &out); atom("restricted_xml", &out); binary(Array(text.utf8), &out)
        case .tooBig:
            binary(Array(error.text.utf8), &out)
        }
    }

    public static func encode(_ element: XMLElement, into out: inout [UInt8]) { encode(element, &out) }

    static func encode(_ element: XMLElement, _ out: inout [UInt8]) {
        tuple(4, &out)
        atom("xmlel", &out)
        binary(element.name, &out)
        encode(element.attributes, &out)
        list(element.children.count, &out)
        for child in element.children {
            switch child {
            case .element(let e): encode(e, &out)
            case .cdata(let text): tuple(2, &out); atom("xmlcdata", &out); binary(text, &out)
            }
        }
        if !element.children.isEmpty { out.append(nilTag) }
    }

    static func encode(_ attributes: [XMLAttribute], _ out: inout [UInt8]) {
        list(attributes.count, &out)
        for a in attributes {
            tuple(2, &out); binary(a.name, &out); binary(a.value, &out)
        }
        if !attributes.isEmpty { out.append(nilTag) }
    }

    /// A list header for `count` elements (the caller appends the elements and, if any, the tail);
    /// the empty list is `NIL_EXT` alone.
    static func list(_ count: Int, _ out: inout [UInt8]) {
        if count == 0 { out.append(nilTag); return }
        out.append(listTag); be32(count, &out)
    }

    static func tuple(_ arity: Int, _ out: inout [UInt8]) { out.append(smallTuple); out.append(UInt8(arity)) }

    static func atom(_ name: StaticString, _ out: inout [UInt8]) {
        out.append(smallAtomUTF8)
        out.append(UInt8(name.utf8CodeUnitCount))
        name.withUTF8Buffer { out.append(contentsOf: $0) }
    }

    static func binary(_ bytes: [UInt8], _ out: inout [UInt8]) {
        out.append(binaryTag); be32(bytes.count, &out); out.append(contentsOf: bytes)
    }

    static func int(_ value: Int, _ out: inout [UInt8]) {
        if (0...255).contains(value) { out.append(smallInteger); out.append(UInt8(value)); return }
        out.append(integer); be32(Int(Int32(truncatingIfNeeded: value)), &out)
    }

    static func be32(_ value: Int, _ out: inout [UInt8]) {
        let v = UInt32(truncatingIfNeeded: value)
        out.append(UInt8(v >> 24)); out.append(UInt8((v >> 16) & 0xFF))
        out.append(UInt8((v >> 8) & 0xFF)); out.append(UInt8(v & 0xFF))
    }
}
