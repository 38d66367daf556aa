import Testing

@testable import MegaphoneCore

#if canImport(Glibc)
import Glibc
#endif

/// A reactor serving two controllers (two ejabberd nodes of a cluster): announcements, node-down and
/// a controller leaving, over loopback sockets.
struct ReactorControllersTests {
    static let a = PidRef(node: 1, num: 10, serial: 0, creation: 1)
    static let b = PidRef(node: 2, num: 20, serial: 0, creation: 1)

    /// A client connected to the harness's listener, its ConnId and the controller it was announced to.
    func connect(_ h: ReactorHarness) throws -> (fd: CInt, id: UInt64, to: PidRef) {
        let fd = socket(AF_INET, CInt(SOCK_STREAM.rawValue), 0)
        let address = SocketAddress(ip: .loopbackIPv4, port: h.listener.bound.port)
        try #require(address.withSockaddr { Glibc.connect(fd, $0, $1) } == 0)
        let connected = h.event { if case .connected = $0 { true } else { false } }
        guard case (let to, .connected(let id, _, _, _))? = connected else {
            close(fd)
            throw ReactorHarness.HarnessError.noConnectEvent
        }
        return (fd, id, to)
    }

    /// Whether the client's socket was closed by the reactor (EOF within 2 s).
    func closedByReactor(_ fd: CInt) -> Bool {
        var tv = timeval(tv_sec: 2, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var byte: UInt8 = 0
        return recv(fd, &byte, 1, 0) == 0
    }

    @Test func roundRobinAnnouncesInTurnAndCountsSessionsPerNode() throws {
        let h = try ReactorHarness(controllers: [Self.a, Self.b]) { $0.balance = .roundRobin }
        let clients = try (0..<4).map { _ in try connect(h) }
        defer { clients.forEach { close($0.fd) } }
        #expect(clients.map(\.to) == [Self.a, Self.b, Self.a, Self.b])
        #expect(h.reactor.sessions.counts(of: [1, 2]) == [2, 2])
    }

    @Test func nodeDownClosesOnlyThatNodesConnections() throws {
        let h = try ReactorHarness(controllers: [Self.a, Self.b]) { $0.balance = .roundRobin }
        let clients = try (0..<4).map { _ in try connect(h) }
        defer { clients.forEach { close($0.fd) } }
        // B's session takes one of its connections: it counts for B's node all the same.
        let session = PidRef(node: 2, num: 99, serial: 0, creation: 1)
        let bs = clients.filter { $0.to == Self.b }
        h.reactor.commands.post(.getData(owner: session, connID: bs[0].id))
        h.reactor.commands.post(.nodeDown(node: 1))
        for client in clients where client.to == Self.a { #expect(closedByReactor(client.fd)) }
        #expect(h.reactor.sessions.counts(of: [1, 2]) == [0, 2])
        // B's connections still carry bytes to their owners.
        send(bs[0].fd, "still here")
        guard case (let to, .data(_, let bytes))? = h.event({ if case .data(bs[0].id, _) = $0 { true } else { false } }) else {
            Issue.record("B's connection was not read after A's node went down")
            return
        }
        #expect(to == session)
        #expect(String(decoding: bytes, as: UTF8.self) == "still here")
        #expect(h.counters.closedCount(.nodeDown) == 2)
    }

    @Test func aControllerThatLeavesHasItsConnectionsClosedAndIsTold() throws {
        let h = try ReactorHarness(controllers: [Self.a, Self.b]) { $0.balance = .roundRobin }
        let clients = try (0..<4).map { _ in try connect(h) }
        defer { clients.forEach { close($0.fd) } }
        h.reactor.commands.post(.release(node: 2))
        for client in clients where client.to == Self.b {
            let told = h.event { if case .closed(client.id) = $0 { true } else { false } }
            #expect(told?.0 == Self.b)
            #expect(closedByReactor(client.fd))
        }
        #expect(h.reactor.sessions.counts(of: [1, 2]) == [2, 0])
    }

    @Test func noControllerLeftClosesANewConnectionUnannounced() throws {
        let h = try ReactorHarness(controllers: []) { _ in }
        let fd = socket(AF_INET, CInt(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        let address = SocketAddress(ip: .loopbackIPv4, port: h.listener.bound.port)
        try #require(address.withSockaddr { Glibc.connect(fd, $0, $1) } == 0)
        #expect(closedByReactor(fd))
        #expect(h.event(within: 200) { if case .connected = $0 { true } else { false } } == nil)
    }
}
