import MegaphoneXML

/// The client side of one XMPP session as a pure function: an event of the server's stream, and
/// the state the session is in, give what to send, the next state and what to report. The loop
/// (`LoadClient`) does the I/O; tests drive this directly.
///
/// Login: header → features with PLAIN → `<auth/>` → `<success/>` → restart (parser reset, new
/// header) → features → bind iq → its result → `<presence/>` → the presence coming back to our own
/// full JID → logged in. Then: answer iq get/set (a ping with a result, anything else with
/// `service-unavailable`), report chat messages with a body and the answer to our own ping.
struct SessionMachine: Sendable {
    let accounts: Accounts

    /// What the loop does after one event.
    struct Reaction: Equatable {
        var state: SessionState
        /// Bytes to write (empty: nothing).
        var send: [UInt8] = []
        /// Reset the parser before anything else is read: the server starts a new stream.
        var restartStream = false
        var report: Report? = nil
    }

    enum Report: Equatable {
        /// The presence echo came: the session is logged in.
        case loggedIn
        /// The session ends (the loop closes it): a failed login or a session down.
        case ended(reason: String)
        /// A chat message with a body; `from` is the sender's JID as the server wrote it.
        case chat(from: [UInt8], body: [UInt8])
        /// A server-initiated ping was answered.
        case answeredPing
        /// The answer to our own ping (`ping` command): a result, or an error.
        case pingResult(ok: Bool)
    }

    /// The session's first bytes once connected: the stream header.
    func opening() -> Reaction {
        Reaction(state: .openingStream, send: Stanzas.streamHeader(domain: accounts.domain))
    }

    /// One event of session `user`'s stream in `state`; `pingID` is the id of the `ping` command's
    /// iq while one is out.
    func handle(_ event: XMLStreamEvent, in state: SessionState, user: Int, pingID: [UInt8]) -> Reaction {
        switch event {
        case .error(let error):
            return end(error == .tooBig ? "stanza-too-big" : "bad-xml")
        case .streamEnd:
            return end("stream-end")
        case .streamStart, .streamCData:
            return Reaction(state: state)
        case .element(let element):
            if element.isStreamElement(XMPPNames.error) {
                return end("stream-error:" + Self.streamErrorCondition(element))
            }
            switch state {
            case .openingStream: return features(element, state: state, user: user)
            case .authenticating: return authResult(element, state: state)
            case .restarting: return restartedFeatures(element, state: state)
            case .binding, .announcing, .live, .pinging:
                return stanza(element, state: state, user: user, pingID: pingID)
            case .waiting, .connecting, .failed, .down, .closed:
                return Reaction(state: state)
            }
        }
    }

    private func end(_ reason: String) -> Reaction {
        Reaction(state: .failed, report: .ended(reason: reason))
    }

    private func features(_ element: XMLElement, state: SessionState, user: Int) -> Reaction {
        guard element.isStreamElement(XMPPNames.features) else { return Reaction(state: state) }
        let plain = element.firstChild(named: XMPPNames.mechanisms)?.childElements.contains {
            $0.name == XMPPNames.mechanism && $0.text == XMPPNames.plain
        } ?? false
        if plain {
            return Reaction(state: .authenticating,
                            send: Stanzas.auth(user: accounts.user(user), password: accounts.password(user)))
        }
        if element.firstChild(named: XMPPNames.starttls)?.firstChild(named: XMPPNames.required) != nil {
            return end("starttls-required")
        }
        return end("no-plain")
    }

    private func authResult(_ element: XMLElement, state: SessionState) -> Reaction {
        if element.name == XMPPNames.success {
            return Reaction(state: .restarting, send: Stanzas.streamHeader(domain: accounts.domain),
                            restartStream: true)
        }
        if element.name == XMPPNames.failure { return end("sasl-failure") }
        return Reaction(state: state)
    }

    private func restartedFeatures(_ element: XMLElement, state: SessionState) -> Reaction {
        guard element.isStreamElement(XMPPNames.features) else { return Reaction(state: state) }
        guard element.firstChild(named: XMPPNames.bind) != nil else { return end("no-bind") }
        return Reaction(state: .binding, send: Stanzas.bind(resource: accounts.resource))
    }

    /// A stanza once bound: the bind result, the presence echo, iqs, messages.
    private func stanza(_ element: XMLElement, state: SessionState, user: Int, pingID: [UInt8]) -> Reaction {
        let type = element.value(of: XMPPNames.type)
        if element.name == XMPPNames.iq {
            let id = element.value(of: XMPPNames.id) ?? []
            if type == XMPPNames.get || type == XMPPNames.set {
                return answer(element, state: state, id: id)
            }
            if state == .binding && id == Stanzas.bindID {
                return type == XMPPNames.result
                    ? Reaction(state: .announcing, send: Stanzas.presence) : end("bind-failed")
            }
            if state == .pinging && id == pingID {
                return Reaction(state: .live, report: .pingResult(ok: type == XMPPNames.result))
            }
            return Reaction(state: state)
        }
        if element.name == XMPPNames.presence {
            if state == .announcing && type == nil,
               let from = element.value(of: XMPPNames.from), accounts.isFullJID(from, of: user) {
                return Reaction(state: .live, report: .loggedIn)
            }
            return Reaction(state: state)
        }
        if element.name == XMPPNames.message && type == XMPPNames.chat,
           let body = element.firstChild(named: XMPPNames.body) {
            return Reaction(state: state, report: .chat(from: element.value(of: XMPPNames.from) ?? [],
                                                        body: body.text))
        }
        return Reaction(state: state)
    }

    /// An iq get or set from the server: XEP-0199 pings get a result, anything else an error.
    private func answer(_ element: XMLElement, state: SessionState, id: [UInt8]) -> Reaction {
        let from = element.value(of: XMPPNames.from)
        let isPing = element.value(of: XMPPNames.type) == XMPPNames.get
            && element.childElements.first.map {
                $0.name == XMPPNames.ping && $0.value(of: XMPPNames.xmlns) == XMPPNames.pingNS
            } == true
        if isPing {
            return Reaction(state: state, send: Stanzas.iqResult(to: from, id: id), report: .answeredPing)
        }
        return Reaction(state: state, send: Stanzas.serviceUnavailable(to: from, id: id))
    }

    /// The defined condition of a `<stream:error/>` (RFC 6120 §4.9.3): its first child other than
    /// `<text/>`, as one word (`policy-violation`); `undefined` when there is none.
    static func streamErrorCondition(_ element: XMLElement) -> String {
        guard let condition = element.childElements.first(where: { $0.name != XMPPNames.text }) else {
            return "undefined"
        }
        let word = condition.name.map { b -> UInt8 in
            b <= UInt8(ascii: " ") || b >= 0x7F ? UInt8(ascii: "_") : b
        }
        return word.isEmpty ? "undefined" : String(decoding: word.prefix(64), as: UTF8.self)
    }
}
