import Testing

@testable import MegaphoneCore
@testable import MegaphoneLoad

#if canImport(Glibc)
import Glibc
#endif

/// The whole loop (sockets, epoll, parser, machine, control channel) against a fake server on
/// loopback. Waiting is on conditions: a line on the event pipe, bytes or EOF on the server's side.
struct LoadClientTests {
    static func configuration(_ server: FakeXMPPServer, count: Int = 1, first: Int = 1) -> LoadConfiguration {
        var c = LoadConfiguration(server: server.address, source: .loopbackIPv4, first: first, count: count,
                                  concurrency: 1, progressSeconds: 0.05, loginTimeoutSeconds: 10)
        c.pingTimeoutSeconds = 5
        return c
    }

    /// A client whose `count` users (from `first`) log in on `server` all at once, and the server's
    /// side of each, in user order.
    static func loggedIn(_ server: FakeXMPPServer, count: Int = 1, first: Int = 1,
                         _ configure: (inout LoadConfiguration) -> Void = { _ in }) throws -> (ClientHarness, [Peer]) {
        var config = configuration(server, count: count, first: first)
        config.concurrency = count
        configure(&config)
        let client = try ClientHarness(config)
        client.command("login")
        let peers = try (0..<count).map { _ in try server.acceptLoggedIn() }.sorted { $0.user < $1.user }
        #expect(client.line("login-done")?.hasPrefix("login-done logged_in=\(count) failed=0 ") == true)
        return (client, peers)
    }

    @Test func aLoginReadOneByteAtATimeEndsLoggedIn() throws {
        let server = try FakeXMPPServer()
        var config = Self.configuration(server, count: 2, first: 41)
        // Every read the client makes takes one byte: each event is completed across many reads.
        config.readBufferSize = 1
        let client = try ClientHarness(config)
        #expect(client.line("ready")?.hasPrefix("ready pid=\(getpid())") == true)
        var before = client.status()
        #expect(before.removeValue(forKey: "rss_kb") ?? 0 > 0)
        #expect(before == ["logged_in": 0, "live": 0, "failed": 0, "down": 0, "pings_answered": 0])
        client.command("login")
        let first = try server.acceptLoggedIn()
        let second = try server.acceptLoggedIn()
        #expect(Set([first.user, second.user]) == [41, 42])
        let done = try #require(client.line("login-done"))
        #expect(done.hasPrefix("login-done logged_in=2 failed=0 secs="))
        let progress = client.skipped.filter { $0.hasPrefix("progress ") }
        #expect(progress.last.map(ClientHarness.fields)?["logged_in"] == 2)
        #expect(progress.last.map(ClientHarness.fields)?["in_flight"] == 0)
        let status = client.status()
        #expect(status["logged_in"] == 2 && status["live"] == 2 && status["failed"] == 0)
        client.command("login")
        #expect(client.line("error") == "error login-already-started login")
    }

    @Test func serverPingsAreAnsweredChatsReportedAndOurPingsCounted() throws {
        let server = try FakeXMPPServer()
        let (client, peers) = try Self.loggedIn(server, first: 5)
        let peer = peers[0]

        peer.send("<iq from='localhost' to='xb5@localhost/r' id='s2c-1' type='get'><ping xmlns='urn:xmpp:ping'/></iq>")
        #expect(try peer.read(until: "/>") == "<iq type='result' to='localhost' id='s2c-1'/>")
        peer.send("<iq from='localhost' id='v' type='get'><query xmlns='jabber:iq:version'/></iq>")
        #expect(try peer.read(until: "</iq>").contains("<service-unavailable"))
        #expect(client.status()["pings_answered"] == 1)

        peer.send("<message from='xb3@localhost/r' to='xb5@localhost/r' type='chat'><body>hi there</body></message>"
            + "<message from='carol@localhost/x' type='chat'><body>t2</body></message>")
        #expect(client.line("got") == "got to=5 from=3 token=hi%20there")
        #expect(client.line("got") == "got to=5 from=carol token=t2")

        client.command("send 5 8 tok&1")
        #expect(try peer.read(until: "</message>")
            == "<message to='xb8@localhost/r' type='chat'><body>tok&amp;1</body></message>")
        client.command("send 6 8 x")
        #expect(client.line("send-failed") == "send-failed from=6 token=x reason=not-local")

        client.command("ping 10")
        let ping = try peer.read(until: "</iq>")
        #expect(ping == "<iq type='get' to='localhost' id='mlp1'><ping xmlns='urn:xmpp:ping'/></iq>")
        peer.send("<iq from='localhost' to='xb5@localhost/r' id='mlp1' type='result'/>")
        #expect(client.line("ping-done")?.hasPrefix("ping-done ok=1 failed=0 secs=") == true)
        client.command("ping 1")
        _ = try peer.read(until: "id='mlp2'")
        peer.send("<iq from='localhost' id='mlp2' type='error'/>")
        #expect(client.line("ping-done")?.hasPrefix("ping-done ok=0 failed=1 ") == true)
    }

    @Test func aStreamErrorDuringLoginIsAFailureWithItsCondition() throws {
        let server = try FakeXMPPServer()
        let client = try ClientHarness(Self.configuration(server, count: 2))
        client.command("login")
        for _ in 0..<2 {
            let peer = try #require(server.accept())
            _ = try peer.read(until: "version='1.0'>")
            peer.send(Peer.header + "<stream:error><policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
                + "<text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>Too many</text></stream:error></stream:stream>")
            #expect(peer.closedByClient())
        }
        #expect(client.line("failure") == "failure reason=stream-error:policy-violation count=2")
        #expect(client.line("login-done")?.hasPrefix("login-done logged_in=0 failed=2 ") == true)
    }

    @Test func aStreamErrorOrBadXMLAfterLoginIsDownAndTheClientGoesOn() throws {
        let server = try FakeXMPPServer()
        let (client, peers) = try Self.loggedIn(server, count: 3)

        peers[0].send("<stream:error><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>")
        peers[1].send("<message><body>x</bdy></message>")
        #expect(peers[0].closedByClient())
        #expect(peers[1].closedByClient())
        let status = client.status()
        #expect(status["down"] == 2 && status["live"] == 1 && status["logged_in"] == 3 && status["failed"] == 0)
        client.command("send 2 1 x")
        #expect(client.line("send-failed") == "send-failed from=2 token=x reason=not-live")
        client.command("send 3 1 still-here")
        #expect(try peers[2].read(until: "</message>").contains("<body>still-here</body>"))
        // Bad commands do not end it either.
        client.command("fly 1 2")
        #expect(client.line("error") == "error unknown-command fly 1 2")
        client.command("ping many")
        #expect(client.line("error") == "error bad-arguments ping many")
    }

    @Test func aServerThatHangsUpOrSaysNothingFailsTheLogin() throws {
        let server = try FakeXMPPServer()
        var config = Self.configuration(server, count: 2)
        config.loginTimeoutSeconds = 0.3
        let client = try ClientHarness(config)
        client.command("login")
        let hangUp = try #require(server.accept())
        _ = try hangUp.read(until: "version='1.0'>")
        shutdown(hangUp.fd, Int32(SHUT_RDWR))
        let silent = try #require(server.accept())
        _ = try silent.read(until: "version='1.0'>")
        #expect(silent.closedByClient(within: 5_000))
        #expect(client.line("failure") == "failure reason=closed count=1")
        #expect(client.line("failure") == "failure reason=timeout count=1")
        #expect(client.line("login-done")?.hasPrefix("login-done logged_in=0 failed=2 ") == true)
    }

    @Test func aRefusedConnectIsCountedNotRetried() throws {
        let server = try FakeXMPPServer()
        var config = Self.configuration(server, count: 3)
        // A port nobody listens on: the listener's own port once it is closed.
        let port = server.address.port
        config.server = SocketAddress(ip: .loopbackIPv4, port: port)
        closeFD(server.fd)
        let client = try ClientHarness(config)
        client.command("login")
        #expect(client.line("failure") == "failure reason=connect-refused count=3")
        #expect(client.line("login-done")?.hasPrefix("login-done logged_in=0 failed=3 ") == true)
    }

    @Test func writesTheSocketDoesNotTakeWaitAndGoOutInOrder() throws {
        let server = try FakeXMPPServer(receiveBuffer: 4096)
        let (client, peers) = try Self.loggedIn(server)
        let peer = peers[0]
        // 600 KB while the server reads nothing: more than its small receive buffer and the
        // client's send buffer hold, less than the output limit (1 MiB).
        let token = String(repeating: "x", count: 60_000)
        for i in 0..<10 { client.command("send 1 2 \(i)-\(token)") }
        #expect(client.status()["live"] == 1)
        var inOrder = 0
        for i in 0..<10 {
            let message = try peer.read(until: "</message>")
            if message.hasSuffix("<body>\(i)-\(token)</body></message>") { inOrder += 1 }
        }
        #expect(inOrder == 10)
        #expect(client.status()["live"] == 1)
    }

    @Test func outputPastTheLimitEndsTheSession() throws {
        let server = try FakeXMPPServer(receiveBuffer: 4096)
        let (client, peers) = try Self.loggedIn(server) { $0.outputLimit = 256 << 10 }
        let peer = peers[0]
        // The kernel takes the first MBs (the send buffer grows); what it does not take waits in
        // the slot until the limit.
        let token = String(repeating: "y", count: 60_000)
        var sent = 0
        while sent < 300 && client.status()["down"] == 0 {
            for _ in 0..<10 { client.command("send 1 2 \(token)") }
            sent += 10
        }
        #expect(client.status()["down"] == 1)
        #expect(peer.closedByClient(within: 10_000))
    }

    @Test func closeEndsEveryStreamAndEndOfInputExits() throws {
        let server = try FakeXMPPServer()
        let (client, peers) = try Self.loggedIn(server, count: 2)
        client.command("close")
        #expect(client.line("closed") == "closed n=2")
        for peer in peers {
            #expect(peer.closedByClient())
            #expect(peer.unread == "</stream:stream>")
        }
        let status = client.status()
        #expect(status["live"] == 0 && status["logged_in"] == 2 && status["down"] == 0)
        client.finish()
    }
}
