/// Text and attribute values in what the client writes: the five predefined entities, so that a
/// token, a resource or an id the server sent cannot break the markup. Attributes are quoted with
/// `'`, and `'` is escaped everywhere.
enum XMLEscaping {
    static func append<S: Sequence<UInt8>>(_ bytes: S, to out: inout [UInt8]) {
        for b in bytes {
            switch b {
            case UInt8(ascii: "&"): out += Self.amp
            case UInt8(ascii: "<"): out += Self.lt
            case UInt8(ascii: ">"): out += Self.gt
            case UInt8(ascii: "'"): out += Self.apos
            case UInt8(ascii: "\""): out += Self.quot
            default: out.append(b)
            }
        }
    }

    private static let amp = Array("&amp;".utf8)
    private static let lt = Array("&lt;".utf8)
    private static let gt = Array("&gt;".utf8)
    private static let apos = Array("&apos;".utf8)
    private static let quot = Array("&quot;".utf8)
}
