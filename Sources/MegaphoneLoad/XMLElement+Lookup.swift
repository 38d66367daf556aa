import MegaphoneXML

/// Reading the server's stanzas without building Strings: names and values are compared as bytes
/// against the constants in `XMPPNames`.
extension XMLElement {
    func value(of attribute: [UInt8]) -> [UInt8]? {
        attributes.first { $0.name == attribute }?.value
    }

    var childElements: [XMLElement] {
        children.compactMap { if case .element(let e) = $0 { e } else { nil } }
    }

    func firstChild(named name: [UInt8]) -> XMLElement? {
        for case .element(let e) in children where e.name == name { return e }
        return nil
    }

    /// The element's character data (its text children, joined).
    var text: [UInt8] {
        var out: [UInt8] = []
        for case .cdata(let bytes) in children { out += bytes }
        return out
    }

    /// `<stream:LOCAL>` (the usual prefix), or `<LOCAL xmlns='http://etherx.jabber.org/streams'>`.
    func isStreamElement(_ local: [UInt8]) -> Bool {
        if name.count == XMPPNames.streamPrefix.count + local.count,
           name.starts(with: XMPPNames.streamPrefix), name.reversed().starts(with: local.reversed()) {
            return true
        }
        return name == local && value(of: XMPPNames.xmlns) == XMPPNames.streamsNS
    }
}

/// The names and values the client looks for, as bytes.
enum XMPPNames {
    static let streamPrefix = Array("stream:".utf8)
    static let streamsNS = Array("http://etherx.jabber.org/streams".utf8)
    static let xmlns = Array("xmlns".utf8)
    static let features = Array("features".utf8)
    static let error = Array("error".utf8)
    static let mechanisms = Array("mechanisms".utf8)
    static let mechanism = Array("mechanism".utf8)
    static let plain = Array("PLAIN".utf8)
    static let starttls = Array("starttls".utf8)
    static let required = Array("required".utf8)
    static let bind = Array("bind".utf8)
    static let success = Array("success".utf8)
    static let failure = Array("failure".utf8)
    static let iq = Array("iq".utf8)
    static let message = Array("message".utf8)
    static let presence = Array("presence".utf8)
    static let body = Array("body".utf8)
    static let ping = Array("ping".utf8)
    static let pingNS = Array("urn:xmpp:ping".utf8)
    static let text = Array("text".utf8)
    static let type = Array("type".utf8)
    static let id = Array("id".utf8)
    static let from = Array("from".utf8)
    static let get = Array("get".utf8)
    static let set = Array("set".utf8)
    static let result = Array("result".utf8)
    static let chat = Array("chat".utf8)
}
