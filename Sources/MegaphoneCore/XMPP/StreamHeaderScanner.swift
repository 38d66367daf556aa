/// Finds the client's stream header (RFC 6120 §4.2: an optional XML declaration, then the
/// `<stream:stream ...>` start tag in the streams namespace) at the start of the bytes a client sent.
///
/// A pure function over the bytes received so far, holding nothing between calls: the STARTTLS
/// opening (`StartTLSNegotiator`) answers the header it finds, and the opening stage watches plain
/// connections with it for `stream_header_timeout`. Not an XML parser: it reads the one start tag's
/// name and attributes and skips quoted values.
public enum StreamHeaderScanner {
    public enum Scan: Equatable, Sendable {
        /// What came so far may still become a stream header.
        case needMore
        /// A whole stream header, `length` bytes long; `to` is its `to` attribute, if any.
        case header(to: String?, length: Int)
        /// Not an XMPP stream header (ejabberd answers such bytes with its own stream error).
        case notAHeader
    }

    static let streamNS = "http://etherx.jabber.org/streams"

    public static func scan(_ bytes: [UInt8]) -> Scan {
        var i = skipSpace(bytes, 0)
        if i + 1 < bytes.count && bytes[i] == UInt8(ascii: "<") && bytes[i + 1] == UInt8(ascii: "?") {
            guard let end = find(bytes, "?>", from: i) else { return .needMore }
            i = skipSpace(bytes, end + 2)
        }
        guard i < bytes.count else { return .needMore }
        guard bytes[i] == UInt8(ascii: "<") else { return .notAHeader }
        guard let close = tagEnd(bytes, from: i) else { return .needMore }
        guard let tag = Tag(bytes[(i + 1)..<close]), tag.localName == "stream", !tag.selfClosing,
              tag.attributes.contains(where: { $0.value == streamNS && ($0.name == "xmlns:\(tag.prefix)" || $0.name == "xmlns") })
        else { return .notAHeader }
        return .header(to: tag.attributes.first { $0.name == "to" }?.value, length: close + 1)
    }

    static func skipSpace(_ bytes: [UInt8], _ from: Int) -> Int {
        var i = from
        while i < bytes.count, [0x20, 0x09, 0x0A, 0x0D].contains(bytes[i]) { i += 1 }
        return i
    }

    static func find(_ bytes: [UInt8], _ needle: String, from: Int) -> Int? {
        let n = Array(needle.utf8)
        guard bytes.count >= n.count, from <= bytes.count - n.count else { return nil }
        for i in from...(bytes.count - n.count) where bytes[i] == n[0] && Array(bytes[i..<(i + n.count)]) == n {
            return i
        }
        return nil
    }

    /// Index of the `>` that ends the tag opening at `from`, skipping quoted attribute values.
    static func tagEnd(_ bytes: [UInt8], from: Int) -> Int? {
        var quote: UInt8? = nil
        var i = from + 1
        while i < bytes.count {
            let b = bytes[i]
            if let q = quote {
                if b == q { quote = nil }
            } else if b == UInt8(ascii: "'") || b == UInt8(ascii: "\"") {
                quote = b
            } else if b == UInt8(ascii: ">") {
                return i
            }
            i += 1
        }
        return nil
    }

    /// A start tag's name and attributes, from the bytes between `<` and `>`.
    struct Tag {
        var prefix: String
        var localName: String
        var attributes: [(name: String, value: String)]
        var selfClosing: Bool

        init?(_ raw: ArraySlice<UInt8>) {
            var text = String(decoding: raw, as: UTF8.self)
            selfClosing = text.hasSuffix("/")
            if selfClosing { text.removeLast() }
            let scalars = Array(text.unicodeScalars)
            var i = 0
            func isSpace(_ c: Unicode.Scalar) -> Bool { c == " " || c == "\t" || c == "\n" || c == "\r" }
            var name = ""
            while i < scalars.count, !isSpace(scalars[i]) { name.unicodeScalars.append(scalars[i]); i += 1 }
            guard !name.isEmpty, !name.hasPrefix("/"), !name.hasPrefix("!"), !name.hasPrefix("?") else { return nil }
            if let colon = name.firstIndex(of: ":") {
                prefix = String(name[..<colon])
                localName = String(name[name.index(after: colon)...])
            } else {
                prefix = ""
                localName = name
            }
            attributes = []
            while true {
                while i < scalars.count, isSpace(scalars[i]) { i += 1 }
                guard i < scalars.count else { break }
                var attr = ""
                while i < scalars.count, scalars[i] != "=", !isSpace(scalars[i]) { attr.unicodeScalars.append(scalars[i]); i += 1 }
                while i < scalars.count, isSpace(scalars[i]) { i += 1 }
                guard i < scalars.count, scalars[i] == "=" else { return nil }
                i += 1
                while i < scalars.count, isSpace(scalars[i]) { i += 1 }
                guard i < scalars.count, scalars[i] == "'" || scalars[i] == "\"" else { return nil }
                let q = scalars[i]
                i += 1
                var value = ""
                while i < scalars.count, scalars[i] != q { value.unicodeScalars.append(scalars[i]); i += 1 }
                guard i < scalars.count else { return nil }
                i += 1
                attributes.append((attr, value))
            }
        }
    }
}
