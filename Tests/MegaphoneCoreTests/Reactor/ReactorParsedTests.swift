import Testing

@testable import MegaphoneCore

#if canImport(Glibc)
import Glibc
#endif

/// Parsed connections (issue 12) and idle notices (issue 13) through a real reactor and socket.
struct ReactorParsedTests {
    static let header = "<stream:stream to='localhost' xmlns='jabber:client' "
        + "xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>"

    /// The event's tag (`xmlstreamstart`, `xmlstreamelement`, ...), read from its encoded form.
    static func kind(_ event: Event) -> String? {
        guard case .stream(let p) = event, p.count > 4, p[0] == 104, p[2] == 119 else { return nil }
        let n = Int(p[3])
        guard p.count >= 4 + n else { return nil }
        return String(decoding: p[4..<(4 + n)], as: UTF8.self)
    }

    func streamEvent(_ h: ReactorHarness, within millis: Int64 = 5_000) -> String? {
        h.event(within: millis) { Self.kind($0) != nil }.flatMap { Self.kind($0.1) }
    }

    @Test func elementsFlowOnlyWithinCredit() throws {
        let h = try ReactorHarness { $0.parser = .parsed; $0.window = 2 }
        let (client, id) = try h.connect()
        defer { close(client) }
        send(client, Self.header + String(repeating: "<presence/>", count: 5))
        h.reactor.commands.post(.getData(owner: ReactorHarness.owner, connID: id))
        #expect(streamEvent(h) == "xmlstreamstart")
        #expect(streamEvent(h) == "xmlstreamelement")
        #expect(streamEvent(h) == "xmlstreamelement")
        // The window is spent: nothing more until credit comes.
        #expect(streamEvent(h, within: 200) == nil)
        h.reactor.commands.post(.credit(connID: id, elements: 3))
        for _ in 0..<3 { #expect(streamEvent(h) == "xmlstreamelement") }
        #expect(streamEvent(h, within: 200) == nil)
        #expect(h.counters.elementsDelivered.load(ordering: .relaxed) == 5)
    }

    @Test func resetStreamStartsANewStream() throws {
        let h = try ReactorHarness { $0.parser = .parsed }
        let (client, id) = try h.connect()
        defer { close(client) }
        send(client, Self.header + "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AA==</auth>")
        h.reactor.commands.post(.getData(owner: ReactorHarness.owner, connID: id))
        #expect(streamEvent(h) == "xmlstreamstart")
        #expect(streamEvent(h) == "xmlstreamelement")
        h.reactor.commands.post(.resetStream(connID: id))
        // Without the reset this header would be an unclosed element of the old stream.
        send(client, Self.header)
        #expect(streamEvent(h) == "xmlstreamstart")
    }

    @Test func badXMLEndsTheStreamWithOneError() throws {
        let h = try ReactorHarness { $0.parser = .parsed }
        let (client, id) = try h.connect()
        defer { close(client) }
        send(client, Self.header + "<message><body>a</bod></message><presence/>")
        h.reactor.commands.post(.getData(owner: ReactorHarness.owner, connID: id))
        #expect(streamEvent(h) == "xmlstreamstart")
        #expect(streamEvent(h) == "xmlstreamerror")
        #expect(streamEvent(h, within: 200) == nil)
        #expect(h.counters.streamErrors.load(ordering: .relaxed) == 1)
    }

    @Test func aQuietConnectionsOwnerHearsItIsIdleOncePerQuietSpell() throws {
        let h = try ReactorHarness { $0.hibernateAfterMillis = 200 }
        let (client, id) = try h.connect()
        defer { close(client) }
        h.reactor.commands.post(.getData(owner: ReactorHarness.owner, connID: id))
        let idle = h.event(within: 2_000) { if case .idle = $0 { true } else { false } }
        #expect(idle?.0 == ReactorHarness.owner)
        #expect(idle?.1 == .idle(connID: id))
        // Once per quiet spell.
        #expect(h.event(within: 600) { if case .idle = $0 { true } else { false } } == nil)
        // A byte makes it eligible again.
        send(client, "x")
        #expect(h.event { if case .data = $0 { true } else { false } } != nil)
        #expect(h.event(within: 2_000) { if case .idle = $0 { true } else { false } } != nil)
        #expect(h.counters.idleNotices.load(ordering: .relaxed) == 2)
    }
}
