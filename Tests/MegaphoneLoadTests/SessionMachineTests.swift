import MegaphoneXML
import Testing

@testable import MegaphoneLoad

/// The login and stanza handling without sockets: server bytes through a real parser into the
/// machine, as the loop does it, with what the machine sends and reports recorded.
struct SessionMachineTests {
    /// One session as the loop drives it: parser, state, and the machine's output.
    struct Driver {
        let machine = SessionMachine(accounts: Accounts(userPrefix: "xb", passwordPrefix: "pw", domain: "localhost",
                                                        resource: "r"))
        var parser = XMLStreamParser()
        var state: SessionState
        var sent: [String] = []
        var reports: [SessionMachine.Report] = []
        var pingID = Array("mlp1".utf8)
        let user: Int

        init(user: Int = 7) {
            self.user = user
            state = .connecting
            apply(machine.opening())
        }

        mutating func apply(_ r: SessionMachine.Reaction) {
            state = r.state
            if r.restartStream { parser.reset() }
            if !r.send.isEmpty { sent.append(String(decoding: r.send, as: UTF8.self)) }
            if let report = r.report { reports.append(report) }
        }

        /// Feeds `text` in pieces of `chunk` bytes, stopping at the first end.
        mutating func server(_ text: String, chunk: Int = Int.max) {
            let bytes = Array(text.utf8)
            var start = 0
            while start < bytes.count {
                let piece = Array(bytes[start..<min(bytes.count, start + chunk)])
                start += piece.count
                piece.withUnsafeBytes { raw in
                    var at = 0
                    while true {
                        let (used, event) = parser.feed(UnsafeRawBufferPointer(rebasing: raw[at...]), limits: XMLStreamLimits())
                        at += used
                        guard let event else { break }
                        apply(machine.handle(event, in: state, user: user, pingID: pingID))
                        if case .ended? = reports.last { return }
                    }
                }
                if case .ended? = reports.last { return }
            }
        }

        var ended: String? {
            if case .ended(let reason)? = reports.last { return reason }
            return nil
        }
    }

    static let header = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
        + "xmlns:stream='http://etherx.jabber.org/streams' id='42' from='localhost' version='1.0' xml:lang='en'>"
    static let saslFeatures = "<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
        + "<mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>SCRAM-SHA-1</mechanism>"
        + "<mechanism>PLAIN</mechanism></mechanisms></stream:features>"
    static let bindFeatures = "<stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/>"
        + "<session xmlns='urn:ietf:params:xml:ns:xmpp-session'><optional/></session></stream:features>"
    static let bindResult = "<iq xmlns='jabber:client' type='result' id='bind1'><bind "
        + "xmlns='urn:ietf:params:xml:ns:xmpp-bind'><jid>xb7@localhost/r</jid></bind></iq>"
    static let echo = "<presence xmlns='jabber:client' xml:lang='en' from='xb7@localhost/r' to='xb7@localhost/r'/>"

    /// Everything up to the presence echo, as ejabberd 23.01 sends it.
    static let transcript = [header + saslFeatures, "<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>",
                             header + bindFeatures, bindResult, echo]

    static func loggedIn() -> Driver {
        var d = Driver()
        for part in transcript { d.server(part) }
        return d
    }

    @Test func theLoginSendsWhatEjabberdExpectsStepByStep() {
        var d = Driver()
        #expect(d.state == .openingStream)
        #expect(d.sent == ["<?xml version='1.0'?><stream:stream to='localhost' xmlns='jabber:client' "
            + "xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>"])
        d.server(Self.transcript[0])
        #expect(d.state == .authenticating)
        // base64("\0xb7\0pw7")
        #expect(d.sent.last == "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AHhiNwBwdzc=</auth>")
        d.server(Self.transcript[1])
        #expect(d.state == .restarting)
        #expect(d.sent.last == d.sent.first)
        d.server(Self.transcript[2])
        #expect(d.state == .binding)
        #expect(d.sent.last == "<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
            + "<resource>r</resource></bind></iq>")
        d.server(Self.transcript[3])
        #expect(d.state == .announcing)
        #expect(d.sent.last == "<presence/>")
        #expect(d.reports.isEmpty)
        d.server(Self.transcript[4])
        #expect(d.state == .live)
        #expect(d.reports == [.loggedIn])
        #expect(d.sent.count == 5)
    }

    @Test(arguments: [1, 2, 3, 7])
    func aLoginSplitIntoSmallPiecesEndsTheSame(chunk: Int) {
        var d = Driver()
        for part in Self.transcript { d.server(part, chunk: chunk) }
        #expect(d.state == .live)
        #expect(d.reports == [.loggedIn])
        #expect(d.sent.count == 5)
    }

    @Test func presenceFromSomeoneElseOrUnavailableIsNotTheEcho() {
        var d = Driver()
        for part in Self.transcript.dropLast() { d.server(part) }
        d.server("<presence from='xb70@localhost/r'/><presence from='xb7@localhost/r2'/>"
            + "<presence from='xb7@localhost/r' type='unavailable'/><presence from='xb7@localhost'/>")
        #expect(d.state == .announcing)
        d.server("<presence from='xb7@localhost/r'/>")
        #expect(d.state == .live)
    }

    @Test func aWrongPasswordIsASASLFailure() {
        var d = Driver()
        d.server(Self.transcript[0])
        d.server("<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><not-authorized/><text>Invalid username or "
            + "password</text></failure>")
        #expect(d.ended == "sasl-failure")
    }

    @Test func featuresWithoutPlainOrBindEndTheLogin() {
        var d = Driver()
        d.server(Self.header + "<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>"
            + "<mechanism>SCRAM-SHA-1</mechanism></mechanisms></stream:features>")
        #expect(d.ended == "no-plain")
        var t = Driver()
        t.server(Self.header + "<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/>"
            + "</starttls></stream:features>")
        #expect(t.ended == "starttls-required")
        var b = Driver()
        b.server(Self.transcript[0])
        b.server(Self.transcript[1])
        b.server(Self.header + "<stream:features/>")
        #expect(b.ended == "no-bind")
    }

    @Test func aBindErrorEndsTheLogin() {
        var d = Driver()
        for part in Self.transcript.prefix(3) { d.server(part) }
        d.server("<iq type='error' id='bind1'><error type='cancel'><conflict "
            + "xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>")
        #expect(d.ended == "bind-failed")
    }

    @Test func aStreamErrorEndsTheSessionWithItsCondition() {
        var d = Self.loggedIn()
        d.server("<stream:error><text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>Replaced</text>"
            + "<conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error></stream:stream>")
        #expect(d.ended == "stream-error:conflict")
        var early = Driver()
        early.server(Self.header + "<stream:error><policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
            + "</stream:error>")
        #expect(early.ended == "stream-error:policy-violation")
        var empty = Self.loggedIn()
        empty.server("<stream:error/>")
        #expect(empty.ended == "stream-error:undefined")
    }

    @Test func theStreamsEndOrBadXMLEndTheSession() {
        var d = Self.loggedIn()
        d.server("</stream:stream>")
        #expect(d.ended == "stream-end")
        var bad = Self.loggedIn()
        bad.server("<message><body>x</bdy></message>")
        #expect(bad.ended == "bad-xml")
        var garbage = Driver()
        garbage.server("HTTP/1.1 400 Bad Request\r\n\r\n")
        #expect(garbage.ended == "bad-xml")
    }

    @Test func aServerPingIsAnsweredWithAResultToItsSender() {
        var d = Self.loggedIn()
        d.server("<iq from='localhost' to='xb7@localhost/r' id='s2c&apos;1' type='get'><ping xmlns='urn:xmpp:ping'/></iq>")
        #expect(d.sent.last == "<iq type='result' to='localhost' id='s2c&apos;1'/>")
        #expect(d.reports.last == .answeredPing)
        #expect(d.state == .live)
    }

    @Test func anyOtherIqGetOrSetIsServiceUnavailable() {
        var d = Self.loggedIn()
        d.server("<iq from='xb1@localhost/r' id='v1' type='get'><query xmlns='jabber:iq:version'/></iq>")
        #expect(d.sent.last == "<iq type='error' to='xb1@localhost/r' id='v1'><error type='cancel'>"
            + "<service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>")
        d.server("<iq id='r1' type='set'><query xmlns='jabber:iq:roster'/></iq>")
        #expect(d.sent.last?.hasPrefix("<iq type='error' id='r1'>") == true)
        let before = d.sent.count
        d.server("<iq id='x' type='result'/><iq id='y' type='error'/>")
        #expect(d.sent.count == before)
        #expect(d.reports == [.loggedIn])
    }

    @Test func chatMessagesWithABodyAreReported() {
        var d = Self.loggedIn()
        d.server("<message from='xb3@localhost/r' to='xb7@localhost/r' type='chat' xmlns='jabber:client'>"
            + "<body>tok&lt;1</body></message>")
        #expect(d.reports.last == .chat(from: Array("xb3@localhost/r".utf8), body: Array("tok<1".utf8)))
        let before = d.reports.count
        d.server("<message from='xb3@localhost/r' type='error'><body>bounced</body></message>"
            + "<message from='xb3@localhost/r' type='chat'><active xmlns='http://jabber.org/protocol/chatstates'/></message>"
            + "<message from='xb3@localhost/r' type='headline'><body>news</body></message>")
        #expect(d.reports.count == before)
    }

    @Test func ourPingsAnswerEndsThePing() {
        var d = Self.loggedIn()
        d.state = .pinging
        d.server("<iq from='localhost' id='other' type='result'/>")
        #expect(d.state == .pinging)
        d.server("<iq from='localhost' id='mlp1' type='result'/>")
        #expect(d.state == .live)
        #expect(d.reports.last == .pingResult(ok: true))
        d.state = .pinging
        d.server("<iq from='localhost' id='mlp1' type='error'><error type='cancel'/></iq>")
        #expect(d.reports.last == .pingResult(ok: false))
        // A late answer, after the ping timed out, changes nothing.
        d.server("<iq from='localhost' id='mlp1' type='result'/>")
        #expect(d.reports.last == .pingResult(ok: false))
        #expect(d.state == .live)
    }

    @Test func anIdleSessionsParserHoldsNoBuffer() {
        let d = Self.loggedIn()
        #expect(d.parser.isIdle)
        #expect(MemoryLayout<Session>.stride <= 64)
    }
}
