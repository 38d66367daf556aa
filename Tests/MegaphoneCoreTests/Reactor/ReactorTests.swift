import Logging
import Testing

@testable import MegaphoneCore

#if canImport(Glibc)
import Glibc
#endif

/// A reactor on its own thread with one loopback listener, driven like the distribution thread does.
final class ReactorHarness {
    let output: Mailbox<ReactorOutput>
    let reactor: Reactor
    let listener: Listener
    let counters = Counters()
    private let thread: pthread_t
    private var received: [ReactorOutput] = []
    static let controller = PidRef(node: 1, num: 10, serial: 0, creation: 1)
    static let owner = PidRef(node: 1, num: 20, serial: 0, creation: 1)

    /// `controllers`: announce to these (by `options.balance`, counting in the reactor's sessions)
    /// instead of `controller`.
    init(toErlang: ByteBudget = ByteBudget(limit: 64 << 20), flushTimeoutMillis: Int64? = nil,
         controllers: [PidRef]? = nil, _ configure: (inout StartOptions) -> Void = { _ in }) throws {
        output = try Mailbox()
        reactor = try Reactor(index: 3, context: NodeContext(output: output, counters: counters, toErlang: toErlang,
                                                             logger: Logger(label: "test")))
        var options = StartOptions()
        configure(&options)
        listener = try Listener(ListenerSpec(transport: .tcp, ip: .loopbackIPv4, port: 0))
        let reactor = self.reactor
        thread = try PThread.spawn(name: "test-reactor") { reactor.run() }
        var config = controllers.map {
            ReactorConfig(controllers: ControllerSet(controllers: $0, balance: options.balance, sessions: reactor.sessions),
                          options: options)
        } ?? ReactorConfig(controller: Self.controller, options: options)
        if let flushTimeoutMillis { config.flushTimeoutMillis = flushTimeoutMillis }
        reactor.commands.post(.configure(config))
        reactor.commands.post(.addListener(listener))
    }

    deinit {
        reactor.commands.post(.shutdown)
        _ = next(within: 5_000) { if case .drained = $0 { true } else { false } }
        // Joined, not left to end on its own: ThreadSanitizer reports an unjoined thread as a leak.
        PThread.join(thread)
    }

    /// The next output that matches, waiting at most `millis`.
    func next(within millis: Int64 = 5_000, where match: (ReactorOutput) -> Bool) -> ReactorOutput? {
        let deadline = monotonicMillis() + millis
        while true {
            if let i = received.firstIndex(where: match) { return received.remove(at: i) }
            let left = deadline - monotonicMillis()
            guard left > 0 else { return nil }
            var p = pollfd(fd: output.wakeup.fd, events: Int16(POLLIN), revents: 0)
            _ = poll(&p, 1, CInt(left))
            received += output.takeAll()
        }
    }

    func event(within millis: Int64 = 5_000, _ match: (Event) -> Bool) -> (PidRef, Event)? {
        guard case .send(let to, let event)? = next(within: millis, where: {
            if case .send(_, let e) = $0 { return match(e) } else { return false }
        }) else { return nil }
        return (to, event)
    }

    /// A blocking client socket connected to the listener, and the ConnId the reactor gave it.
    func connect() throws -> (fd: CInt, id: UInt64) {
        let fd = socket(AF_INET, CInt(SOCK_STREAM.rawValue), 0)
        let address = SocketAddress(ip: .loopbackIPv4, port: listener.bound.port)
        let rc = address.withSockaddr { Glibc.connect(fd, $0, $1) }
        try #require(rc == 0)
        let connected = event { if case .connected = $0 { true } else { false } }
        guard case (let to, .connected(let id, let peer, let local, .tcp))? = connected else {
            throw HarnessError.noConnectEvent
        }
        #expect(to == Self.controller)
        #expect(local.port == listener.bound.port)
        #expect(Socket.localAddress(fd)?.port == peer.port)
        #expect(Reactor.reactorIndex(of: id) == 3)
        return (fd, id)
    }

    enum HarnessError: Error { case noConnectEvent }
}

func send(_ fd: CInt, _ text: String) {
    _ = Array(text.utf8).withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, 0) }
}

struct ReactorTests {
    @Test func oneChunkPerGetDataAtMostMaxChunk() throws {
        let h = try ReactorHarness { $0.maxChunk = 4 }
        let (client, id) = try h.connect()
        defer { close(client) }
        send(client, "abcdefghij")
        var collected: [UInt8] = []
        for expected in ["abcd", "efgh", "ij"] {
            h.reactor.commands.post(.getData(owner: ReactorHarness.owner, connID: id))
            let got = h.event { if case .data = $0 { true } else { false } }
            guard case (let to, .data(_, let bytes))? = got else {
                Issue.record("no chunk for \(expected)")
                return
            }
            #expect(to == ReactorHarness.owner)
            #expect(String(decoding: bytes, as: UTF8.self) == expected)
            collected += bytes
            // Nothing more arrives until the next get_data.
            #expect(h.event(within: 100) { if case .data = $0 { true } else { false } } == nil)
        }
        #expect(collected.count == 10)
    }

    @Test func aFullDistributionQueueStopsReadsUntilItDrains() throws {
        let queue = ByteBudget(limit: 8)
        let h = try ReactorHarness(toErlang: queue) { $0.maxChunk = 8 }
        let (a, idA) = try h.connect()
        defer { close(a) }
        let (b, idB) = try h.connect()
        defer { close(b) }
        send(a, "aaaaaaaa")
        h.reactor.commands.post(.getData(owner: ReactorHarness.owner, connID: idA))
        #expect(h.event { if case .data(idA, _) = $0 { true } else { false } } != nil)
        #expect(queue.queuedBytes == 8)
        // The queue is full (nobody took the chunk off): B's bytes stay in the kernel.
        send(b, "bbbb")
        h.reactor.commands.post(.getData(owner: ReactorHarness.owner, connID: idB))
        #expect(h.event(within: 300) { if case .data(idB, _) = $0 { true } else { false } } == nil)
        #expect(queue.pausedReadCount >= 1)
        #expect(!queue.shouldResume())
        // The distribution thread sends A's chunk, sees the queue drained and lets B be read.
        queue.taken(8)
        #expect(queue.shouldResume())
        #expect(!queue.shouldResume())
        h.reactor.commands.post(.resumeReads)
        guard case (_, .data(_, let bytes))? = h.event({ if case .data(idB, _) = $0 { true } else { false } }) else {
            Issue.record("B was not read after resumeReads")
            return
        }
        #expect(String(decoding: bytes, as: UTF8.self) == "bbbb")
        #expect(queue.peakBytes == 8)
    }

    @Test func injectedBytesComeBeforeUnreadSocketBytes() throws {
        let h = try ReactorHarness()
        let (client, id) = try h.connect()
        defer { close(client) }
        send(client, "cd")
        h.reactor.commands.post(.putData(replyTo: nil, connID: id, bytes: Array("AB".utf8)))
        var text = ""
        let deadline = monotonicMillis() + 5_000
        while text.count < 4 && monotonicMillis() < deadline {
            h.reactor.commands.post(.getData(owner: ReactorHarness.owner, connID: id))
            if case (_, .data(_, let bytes))? = h.event({ if case .data = $0 { true } else { false } }) {
                text += String(decoding: bytes, as: UTF8.self)
            }
        }
        #expect(text == "ABcd")
    }

    @Test func sendQueueLimitClosesTheConnection() throws {
        let h = try ReactorHarness { $0.sendQueueLimit = 64 * 1024 }
        let (client, id) = try h.connect()
        h.reactor.commands.post(.getData(owner: ReactorHarness.owner, connID: id))
        // The client never reads: its receive buffer and ours fill, then the queue passes the limit.
        let chunk = [UInt8](repeating: 0x61, count: 64 * 1024)
        var failure: (PidRef, Event)? = nil
        for _ in 0..<2_000 where failure == nil {
            h.reactor.commands.post(.sendData(connID: id, bytes: chunk))
            failure = h.event(within: 10) { if case .error = $0 { true } else { false } }
        }
        guard case (let to, .error(let failedID, let reason))? = failure else {
            close(client)
            Issue.record("send queue never filled")
            return
        }
        #expect(to == ReactorHarness.owner)
        #expect(failedID == id)
        #expect(reason == "send_queue_full")
        // The connection lives on to flush its stream error (at most 5 s); the client going away
        // ends it, still counted as send_queue_full, and the owner hears nothing more.
        #expect(h.counters.closedCount(.sendQueueFull) == 0)
        close(client)
        let deadline = monotonicMillis() + 5_000
        while h.counters.closedCount(.sendQueueFull) == 0 && monotonicMillis() < deadline { usleep(10_000) }
        #expect(h.counters.closedCount(.sendQueueFull) == 1)
        #expect(h.counters.closedCount(.clientError) == 0 && h.counters.closedCount(.clientClosed) == 0)
        #expect(h.event(within: 200) { _ in true } == nil)
    }

    @Test func clientHangupIsReportedWithoutGetData() throws {
        let h = try ReactorHarness()
        let (client, id) = try h.connect()
        close(client)
        let closed = h.event { if case .closed = $0 { true } else { false } }
        guard case (let to, .closed(let closedID))? = closed else {
            Issue.record("no tcp_closed")
            return
        }
        #expect(to == ReactorHarness.controller)
        #expect(closedID == id)
    }

    @Test func maxConnectionsRefusesTheExtraClient() throws {
        let h = try ReactorHarness { $0.maxConnections = 1 }
        let (first, _) = try h.connect()
        defer { close(first) }
        let second = socket(AF_INET, CInt(SOCK_STREAM.rawValue), 0)
        defer { close(second) }
        let address = SocketAddress(ip: .loopbackIPv4, port: h.listener.bound.port)
        #expect(address.withSockaddr { Glibc.connect(second, $0, $1) } == 0)
        var byte: UInt8 = 0
        var tv = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(second, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        #expect(recv(second, &byte, 1, 0) == 0)
        #expect(h.counters.closedCount(.maxConnections) == 1)
    }
}
