/// The plaintext opening of a connection on a `starttls` listener (RFC 6120 §5): Megaphone answers the
/// client's first stream header itself, with features that require STARTTLS, and waits for
/// `<starttls/>`. ejabberd never sees this part: it cannot run STARTTLS over a foreign socket module,
/// so the session is handed over after the TLS handshake and starts with the client's fresh stream
/// header.
///
/// A pure function over the bytes received so far; the reactor keeps the bytes and the one bit of state
/// (header answered or not).
public enum StartTLSNegotiator {
    /// What to do next.
    public enum Step: Equatable, Sendable {
        /// Wait for more bytes.
        case needMore
        /// The stream header is complete (`consumed` bytes): send `reply`, then look for `<starttls/>`.
        case sendFeatures(reply: [UInt8], consumed: Int)
        /// `<starttls/>`: send `reply` (`<proceed/>`) and start the TLS handshake. Bytes the client sent
        /// after it are dropped unread (they would be plaintext injected into the TLS session).
        case proceed(reply: [UInt8])
        /// Anything else: send `reply` (a stream error and the stream's end) and close.
        case refuse(reply: [UInt8], reason: Refusal)
    }

    public enum Refusal: String, Sendable {
        /// Not an XMPP stream header.
        case badFormat = "bad-format"
        /// An element other than `<starttls/>` before TLS, or too much data.
        case policyViolation = "policy-violation"
        /// The client ended the stream.
        case closed
    }

    /// More plaintext than a stream header and `<starttls/>` need: refused.
    public static let maxBytes = 8192

    static let streamNS = "http://etherx.jabber.org/streams"
    static let tlsNS = "urn:ietf:params:xml:ns:xmpp-tls"

    /// The next step for the bytes received so far (everything after what earlier steps consumed).
    public static func next(_ bytes: [UInt8], headerAnswered: Bool) -> Step {
        var i = skipSpace(bytes, 0)
        if !headerAnswered {
            if i + 1 < bytes.count && bytes[i] == UInt8(ascii: "<") && bytes[i + 1] == UInt8(ascii: "?") {
                guard let end = find(bytes, "?>", from: i) else { return more(bytes, headerAnswered) }
                i = skipSpace(bytes, end + 2)
            }
            guard i < bytes.count else { return more(bytes, headerAnswered) }
            guard bytes[i] == UInt8(ascii: "<") else { return refuse(.badFormat, headerSent: false) }
            guard let close = tagEnd(bytes, from: i) else { return more(bytes, headerAnswered) }
            guard let tag = Tag(bytes[(i + 1)..<close]), tag.localName == "stream", !tag.selfClosing,
                  tag.attributes.contains(where: { $0.value == streamNS && ($0.name == "xmlns:\(tag.prefix)" || $0.name == "xmlns") })
            else { return refuse(.badFormat, headerSent: false) }
            return .sendFeatures(reply: Array(header(to: tag.attributes.first { $0.name == "to" }?.value).utf8)
                                     + Array(features.utf8),
                                 consumed: close + 1)
        }
        guard i < bytes.count else { return more(bytes, headerAnswered) }
        guard bytes[i] == UInt8(ascii: "<") else { return refuse(.policyViolation, headerSent: true) }
        if i + 1 < bytes.count && bytes[i + 1] == UInt8(ascii: "/") {
            return .refuse(reply: Array("</stream:stream>".utf8), reason: .closed)
        }
        guard let close = tagEnd(bytes, from: i) else { return more(bytes, headerAnswered) }
        guard let tag = Tag(bytes[(i + 1)..<close]) else { return refuse(.policyViolation, headerSent: true) }
        guard tag.localName == "starttls", tag.prefix.isEmpty,
              tag.attributes.contains(where: { $0.name == "xmlns" && $0.value == tlsNS })
        else { return refuse(.policyViolation, headerSent: true) }
        if !tag.selfClosing {
            // <starttls xmlns='...'></starttls>
            let rest = skipSpace(bytes, close + 1)
            guard let end = find(bytes, "</starttls>", from: rest) else { return more(bytes, headerAnswered) }
            guard end == rest else { return refuse(.policyViolation, headerSent: true) }
        }
        return .proceed(reply: Array("<proceed xmlns='\(tlsNS)'/>".utf8))
    }

    static let features =
        "<stream:features><starttls xmlns='\(tlsNS)'><required/></starttls></stream:features>"

    /// The server's stream header; `from` echoes the client's `to` when it is a plain domain name.
    static func header(to: String?) -> String {
        let domain = to.flatMap { $0.utf8.count <= 255 && $0.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || "-._".contains($0)) } ? $0 : nil }
        let from = domain.map { " from='\($0)'" } ?? ""
        let id = String(UInt64.random(in: 1...UInt64.max), radix: 16)
        return "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='\(streamNS)'"
            + " id='\(id)'\(from) version='1.0' xml:lang='en'>"
    }

    static func refuse(_ reason: Refusal, headerSent: Bool) -> Step {
        let error = "<stream:error><\(reason.rawValue) xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error></stream:stream>"
        return .refuse(reply: Array(((headerSent ? "" : header(to: nil)) + error).utf8), reason: reason)
    }

    static func more(_ bytes: [UInt8], _ headerAnswered: Bool) -> Step {
        bytes.count > maxBytes ? refuse(.policyViolation, headerSent: headerAnswered) : .needMore
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
