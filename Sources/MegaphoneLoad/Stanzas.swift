/// What a session writes, as bytes. Every value that comes from the command line, stdin or the
/// server is escaped (`XMLEscaping`).
enum Stanzas {
    /// The client's stream header, sent at connect and again after SASL success.
    static func streamHeader(domain: [UInt8]) -> [UInt8] {
        var out = Array("<?xml version='1.0'?><stream:stream to='".utf8)
        XMLEscaping.append(domain, to: &out)
        out += Array(("' xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' "
            + "version='1.0'>").utf8)
        return out
    }

    /// SASL PLAIN (RFC 4616): base64 of `\0user\0password`, no authorization identity.
    static func auth(user: [UInt8], password: [UInt8]) -> [UInt8] {
        var out = Array("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>".utf8)
        Base64.encode([0] + user + [0] + password, into: &out)
        out += Array("</auth>".utf8)
        return out
    }

    /// The resource binding request; its result carries the id `bindID`.
    static func bind(resource: [UInt8]) -> [UInt8] {
        var out = Array("<iq type='set' id='".utf8) + bindID
        out += Array("'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>".utf8)
        XMLEscaping.append(resource, to: &out)
        out += Array("</resource></bind></iq>".utf8)
        return out
    }

    static let bindID = Array("bind1".utf8)

    static let presence = Array("<presence/>".utf8)

    static let streamEnd = Array("</stream:stream>".utf8)

    /// The empty result that answers an iq (XEP-0199: a ping's answer).
    static func iqResult(to: [UInt8]?, id: [UInt8]) -> [UInt8] {
        var out = Array("<iq type='result'".utf8)
        appendAddressing(to: to, id: id, to: &out)
        out += Array("/>".utf8)
        return out
    }

    /// The error that answers an iq this client does not serve (RFC 6120 §8.3.3.19).
    static func serviceUnavailable(to: [UInt8]?, id: [UInt8]) -> [UInt8] {
        var out = Array("<iq type='error'".utf8)
        appendAddressing(to: to, id: id, to: &out)
        out += Array(("><error type='cancel'><service-unavailable "
            + "xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>").utf8)
        return out
    }

    /// An XEP-0199 ping to the server.
    static func ping(domain: [UInt8], id: [UInt8]) -> [UInt8] {
        var out = Array("<iq type='get' to='".utf8)
        XMLEscaping.append(domain, to: &out)
        out += Array("' id='".utf8)
        XMLEscaping.append(id, to: &out)
        out += Array("'><ping xmlns='urn:xmpp:ping'/></iq>".utf8)
        return out
    }

    static func chat(to jid: [UInt8], body: [UInt8]) -> [UInt8] {
        var out = Array("<message to='".utf8)
        XMLEscaping.append(jid, to: &out)
        out += Array("' type='chat'><body>".utf8)
        XMLEscaping.append(body, to: &out)
        out += Array("</body></message>".utf8)
        return out
    }

    private static func appendAddressing(to: [UInt8]?, id: [UInt8], to out: inout [UInt8]) {
        if let to {
            out += Array(" to='".utf8)
            XMLEscaping.append(to, to: &out)
            out.append(UInt8(ascii: "'"))
        }
        out += Array(" id='".utf8)
        XMLEscaping.append(id, to: &out)
        out.append(UInt8(ascii: "'"))
    }
}
