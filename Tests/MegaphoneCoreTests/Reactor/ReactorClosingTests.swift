import Testing

@testable import MegaphoneCore

#if canImport(Glibc)
import Glibc
#endif

/// How a client connection ends: half-close (`Reactor+HalfClose.swift`), lingering close
/// (`LingeringSockets.swift`) and the announce deadline (`Reactor+AnnounceDeadline.swift`), over
/// loopback with real client sockets.
struct ReactorClosingTests {
    enum End: Equatable {
        case eof
        case failed(CInt)
        case timeout
    }

    /// Reads until EOF, an error, or `millis` without a byte.
    static func readToEnd(_ fd: CInt, millis: Int = 5_000) -> ([UInt8], End) {
        var tv = timeval(tv_sec: millis / 1000, tv_usec: (millis % 1000) * 1000)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var got: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65_536)
        while true {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n > 0 {
                got += buffer[0..<n]
            } else if n == 0 {
                return (got, .eof)
            } else {
                let err = errno
                return (got, err == EAGAIN ? .timeout : .failed(err))
            }
        }
    }

    static func text(_ bytes: [UInt8]) -> String { String(decoding: bytes, as: UTF8.self) }

    static func isClosed(_ id: UInt64) -> (Event) -> Bool {
        { if case .closed(id) = $0 { true } else { false } }
    }

    static func isData(_ id: UInt64) -> (Event) -> Bool {
        { if case .data(id, _) = $0 { true } else { false } }
    }

    // MARK: half-close

    /// The client sends, then shuts its side. Its bytes come a chunk per get_data; tcp_closed follows
    /// the last chunk; what the owner sends after that still reaches the client, then `close` ends it.
    @Test func halfCloseDeliversInChunksThenKeepsTheWriteSideOpen() throws {
        let h = try ReactorHarness { $0.maxChunk = 4 }
        let (client, id) = try h.connect()
        defer { close(client) }
        send(client, "</stream>!")
        shutdown(client, CInt(SHUT_WR))
        // Not armed, bytes pending: nothing yet, not even tcp_closed.
        #expect(h.event(within: 200) { _ in true } == nil)
        var got = ""
        for expected in ["</st", "ream", ">!"] {
            h.reactor.commands.post(.getData(owner: ReactorHarness.owner, connID: id))
            guard case (_, .data(_, let bytes))? = h.event(Self.isData(id)) else {
                Issue.record("no chunk for \(expected)")
                return
            }
            #expect(Self.text(bytes) == expected)
            got += Self.text(bytes)
        }
        #expect(got == "</stream>!")
        // Right after the last chunk, unasked.
        guard case (let to, _)? = h.event(Self.isClosed(id)) else {
            Issue.record("no tcp_closed after the last chunk")
            return
        }
        #expect(to == ReactorHarness.owner)
        // ejabberd's answer to the client's </stream:stream>.
        h.reactor.commands.post(.sendData(connID: id, bytes: Array("</stream:stream>".utf8)))
        h.reactor.commands.post(.close(connID: id))
        let (answer, end) = Self.readToEnd(client)
        #expect(Self.text(answer) == "</stream:stream>")
        #expect(end == .eof)
        #expect(h.counters.closedCount(.clientClosed) == 1)
        #expect(h.counters.closedCount(.requested) == 0)
        // Told once.
        #expect(h.event(within: 200) { _ in true } == nil)
    }

    /// Half-closed with nothing pending and nobody asking: tcp_closed at once; the write side stays
    /// open until the owner's close or, without one, the flush timeout.
    @Test func halfCloseWithNothingPendingWaitsForTheOwnersClose() throws {
        let h = try ReactorHarness(flushTimeoutMillis: 300)
        let (client, id) = try h.connect()
        defer { close(client) }
        shutdown(client, CInt(SHUT_WR))
        guard case (let to, _)? = h.event(Self.isClosed(id)) else {
            Issue.record("no tcp_closed")
            return
        }
        #expect(to == ReactorHarness.controller)
        h.reactor.commands.post(.sendData(connID: id, bytes: Array("bye".utf8)))
        // No close from the owner: the node closes after the wait.
        let start = monotonicMillis()
        let (answer, end) = Self.readToEnd(client)
        #expect(Self.text(answer) == "bye")
        #expect(end == .eof)
        #expect(monotonicMillis() - start >= 200)
        #expect(h.counters.closedCount(.clientClosed) == 1)
        #expect(h.event(within: 200) { _ in true } == nil)
    }

    /// What a half-closed client left in the kernel goes through the distribution queue like any
    /// read: while the queue is full it stays in the kernel.
    @Test func halfClosedInputWaitsForTheDistributionQueue() throws {
        let queue = ByteBudget(limit: 8)
        let h = try ReactorHarness(toErlang: queue) { $0.maxChunk = 8 }
        let (a, idA) = try h.connect()
        defer { close(a) }
        let (b, idB) = try h.connect()
        defer { close(b) }
        send(a, "aaaaaaaa")
        h.reactor.commands.post(.getData(owner: ReactorHarness.owner, connID: idA))
        #expect(h.event(Self.isData(idA)) != nil)
        send(b, "bbbb")
        shutdown(b, CInt(SHUT_WR))
        h.reactor.commands.post(.getData(owner: ReactorHarness.owner, connID: idB))
        #expect(h.event(within: 300) { if case .data(idB, _) = $0 { true } else if case .closed(idB) = $0 { true } else { false } } == nil)
        queue.taken(8)
        #expect(queue.shouldResume())
        h.reactor.commands.post(.resumeReads)
        guard case (_, .data(_, let bytes))? = h.event(Self.isData(idB)) else {
            Issue.record("B was not read after resumeReads")
            return
        }
        #expect(Self.text(bytes) == "bbbb")
        #expect(h.event(Self.isClosed(idB)) != nil)
    }

    // MARK: lingering close

    /// The owner writes a stream error and closes while the client is still sending: the node shuts
    /// its side and discards the rest, so the client's sends complete and it reads the error, then
    /// EOF, instead of a reset.
    @Test func closeWithUnreadInputLingers() throws {
        let h = try ReactorHarness()
        let (client, id) = try h.connect()
        defer { close(client) }
        // A small send buffer, so that what the client has in flight stays well under the linger's
        // byte budget.
        var sndbuf: CInt = 32 * 1024
        setsockopt(client, SOL_SOCKET, SO_SNDBUF, &sndbuf, socklen_t(MemoryLayout<CInt>.size))
        let chunk = [UInt8](repeating: 0x78, count: 16 * 1024)
        // Send until the kernel takes no more: the node holds unread input.
        let flags = fcntl(client, F_GETFL)
        _ = fcntl(client, F_SETFL, flags | O_NONBLOCK)
        var buffered = 0
        while true {
            let n = chunk.withUnsafeBytes { Glibc.send(client, $0.baseAddress, $0.count, CInt(MSG_NOSIGNAL)) }
            guard n > 0 else { break }
            buffered += n
        }
        #expect(buffered > 0)
        _ = fcntl(client, F_SETFL, flags)
        let error = "<stream:error><policy-violation/></stream:error></stream:stream>"
        h.reactor.commands.post(.sendData(connID: id, bytes: Array(error.utf8)))
        h.reactor.commands.post(.close(connID: id))
        // The client goes on sending (blocking) 256 KiB more.
        var tv = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(client, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var sendError: CInt = 0
        for _ in 0..<16 where sendError == 0 {
            let n = chunk.withUnsafeBytes { Glibc.send(client, $0.baseAddress, $0.count, CInt(MSG_NOSIGNAL)) }
            if n < 0 { sendError = errno }
        }
        #expect(sendError == 0, "the client's send failed: errno \(sendError)")
        let (got, end) = Self.readToEnd(client)
        #expect(Self.text(got) == error)
        #expect(end == .eof)
        #expect(h.counters.closedCount(.requested) == 1)
        #expect(h.counters.connections.load(ordering: .relaxed) == 0)
    }

    /// A lingering socket ends as soon as the client closes its side.
    @Test func lingeringEndsWhenTheClientCloses() throws {
        let h = try ReactorHarness()
        let (client, id) = try h.connect()
        defer { close(client) }
        h.reactor.commands.post(.close(connID: id))
        // Our FIN comes at once (shutdown), not after the linger time.
        let start = monotonicMillis()
        let (_, end) = Self.readToEnd(client)
        #expect(end == .eof)
        #expect(monotonicMillis() - start < LingeringSockets.millis)
    }

    // MARK: announce deadline

    /// A connection nobody asks for data is closed at `announce_timeout`, counted, and the
    /// controller told; one that was asked stays.
    @Test func announcedConnectionsNeverArmedAreClosedAtTheDeadline() throws {
        let h = try ReactorHarness { $0.announceTimeoutMillis = 300 }
        let (unclaimed, unclaimedID) = try h.connect()
        defer { close(unclaimed) }
        let (claimed, claimedID) = try h.connect()
        defer { close(claimed) }
        h.reactor.commands.post(.getData(owner: ReactorHarness.owner, connID: claimedID))
        guard case (let to, _)? = h.event(Self.isClosed(unclaimedID)) else {
            Issue.record("the unclaimed connection was not closed")
            return
        }
        #expect(to == ReactorHarness.controller)
        let (_, end) = Self.readToEnd(unclaimed)
        #expect(end == .eof)
        #expect(h.counters.closedCount(.announceTimeout) == 1)
        // The claimed one is still there, well past the deadline.
        #expect(h.event(within: 500) { if case .closed(claimedID) = $0 { true } else { false } } == nil)
        send(claimed, "hi")
        guard case (_, .data(_, let bytes))? = h.event(Self.isData(claimedID)) else {
            Issue.record("the claimed connection was not served")
            return
        }
        #expect(Self.text(bytes) == "hi")
    }
}
