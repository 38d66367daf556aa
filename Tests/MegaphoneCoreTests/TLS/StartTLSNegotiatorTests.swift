import Testing

@testable import MegaphoneCore

struct StartTLSNegotiatorTests {
    let header = "<?xml version='1.0'?><stream:stream to='example.org' xmlns='jabber:client' "
        + "xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>"

    func step(_ text: String, answered: Bool) -> StartTLSNegotiator.Step {
        StartTLSNegotiator.next(Array(text.utf8), headerAnswered: answered)
    }

    func text(_ bytes: [UInt8]) -> String { String(decoding: bytes, as: UTF8.self) }

    @Test func headerGetsFeaturesRequiringStartTLS() {
        guard case .sendFeatures(let reply, let consumed) = step(header + "<starttls", answered: false) else {
            Issue.record("no features")
            return
        }
        #expect(consumed == header.utf8.count)
        let r = text(reply)
        #expect(r.hasPrefix("<?xml version='1.0'?><stream:stream xmlns='jabber:client'"))
        #expect(r.contains("from='example.org'"))
        #expect(r.hasSuffix("<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls></stream:features>"))
    }

    @Test func partialInputWaits() {
        for cut in [0, 5, 21, header.utf8.count - 1] {
            #expect(step(String(header.prefix(cut)), answered: false) == .needMore)
        }
        #expect(step("  <starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'", answered: true) == .needMore)
    }

    @Test func startTLSBothForms() {
        let proceed = StartTLSNegotiator.Step.proceed(reply: Array("<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>".utf8))
        #expect(step("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>", answered: true) == proceed)
        #expect(step("\n<starttls xmlns=\"urn:ietf:params:xml:ns:xmpp-tls\"></starttls>", answered: true) == proceed)
        // Bytes pipelined after <starttls/> are not read as plaintext: the step is still proceed.
        #expect(step("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/><message>injected</message>", answered: true) == proceed)
    }

    @Test func anythingElseIsRefused() {
        let auth = step("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGEAYg==</auth>", answered: true)
        guard case .refuse(let reply, .policyViolation) = auth else {
            Issue.record("auth not refused: \(auth)")
            return
        }
        #expect(text(reply) == "<stream:error><policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error></stream:stream>")
        // Wrong namespace on starttls.
        guard case .refuse(_, .policyViolation) = step("<starttls xmlns='jabber:client'/>", answered: true) else {
            Issue.record("wrong namespace accepted")
            return
        }
        guard case .refuse(_, .closed) = step("</stream:stream>", answered: true) else {
            Issue.record("stream end not seen")
            return
        }
    }

    @Test func garbageAndHugeInputAreRefused() {
        guard case .refuse(let reply, .badFormat) = step("\u{16}\u{03}\u{01}\u{02}\u{00}", answered: false) else {
            Issue.record("garbage accepted")
            return
        }
        #expect(text(reply).contains("<bad-format"))
        guard case .refuse(_, .badFormat) = step("<html><body>", answered: false) else {
            Issue.record("not a stream header, accepted")
            return
        }
        let endless = "<stream:stream " + String(repeating: "a", count: StartTLSNegotiator.maxBytes)
        guard case .refuse(_, .policyViolation) = step(endless, answered: false) else {
            Issue.record("unbounded header accepted")
            return
        }
    }

    @Test func hostileToIsNotEchoed() {
        let evil = "<stream:stream to=\"x'/><evil/>\" xmlns:stream='http://etherx.jabber.org/streams'>"
        guard case .sendFeatures(let reply, _) = step(evil, answered: false) else {
            Issue.record("no features")
            return
        }
        #expect(!text(reply).contains("evil"))
    }
}
