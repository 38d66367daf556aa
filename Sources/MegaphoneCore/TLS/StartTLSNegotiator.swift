/// The plaintext opening of a connection on a `starttls` listener (RFC 6120 §5): Megaphone answers the
/// client's first stream header itself, with features that require STARTTLS, and waits for
/// `<starttls/>`. ejabberd never sees this part: it cannot run STARTTLS over a foreign socket module,
/// so the session is handed over after the TLS handshake and starts with the client's fresh stream
/// header.
///
/// A pure function over the bytes received so far; the reactor keeps the bytes and the one bit of state
/// (header answered or not). The header itself is read by `StreamHeaderScanner`, which the reactor
/// also uses, alone, to watch plain connections for their header.
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

    static let tlsNS = "urn:ietf:params:xml:ns:xmpp-tls"

    /// The next step for the bytes received so far (everything after what earlier steps consumed).
    public static func next(_ bytes: [UInt8], headerAnswered: Bool) -> Step {
        if !headerAnswered {
            switch StreamHeaderScanner.scan(bytes) {
            case .needMore: return more(bytes, headerAnswered)
            case .notAHeader: return refuse(.badFormat, headerSent: false)
            case .header(let to, let length):
                return .sendFeatures(reply: Array(header(to: to).utf8) + Array(features.utf8), consumed: length)
            }
        }
        let i = StreamHeaderScanner.skipSpace(bytes, 0)
        guard i < bytes.count else { return more(bytes, headerAnswered) }
        guard bytes[i] == UInt8(ascii: "<") else { return refuse(.policyViolation, headerSent: true) }
        if i + 1 < bytes.count && bytes[i + 1] == UInt8(ascii: "/") {
            return .refuse(reply: Array("</stream:stream>".utf8), reason: .closed)
        }
        guard let close = StreamHeaderScanner.tagEnd(bytes, from: i) else { return more(bytes, headerAnswered) }
        guard let tag = StreamHeaderScanner.Tag(bytes[(i + 1)..<close]) else { return refuse(.policyViolation, headerSent: true) }
        guard tag.localName == "starttls", tag.prefix.isEmpty,
              tag.attributes.contains(where: { $0.name == "xmlns" && $0.value == tlsNS })
        else { return refuse(.policyViolation, headerSent: true) }
        if !tag.selfClosing {
            // <starttls xmlns='...'></starttls>
            let rest = StreamHeaderScanner.skipSpace(bytes, close + 1)
            guard let end = StreamHeaderScanner.find(bytes, "</starttls>", from: rest) else { return more(bytes, headerAnswered) }
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
        return "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='\(StreamHeaderScanner.streamNS)'"
            + " id='\(id)'\(from) version='1.0' xml:lang='en'>"
    }

    static func refuse(_ reason: Refusal, headerSent: Bool) -> Step {
        let error = "<stream:error><\(reason.rawValue) xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error></stream:stream>"
        return .refuse(reply: Array(((headerSent ? "" : header(to: nil)) + error).utf8), reason: reason)
    }

    static func more(_ bytes: [UInt8], _ headerAnswered: Bool) -> Step {
        bytes.count > maxBytes ? refuse(.policyViolation, headerSent: headerAnswered) : .needMore
    }
}
