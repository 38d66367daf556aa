import Testing

@testable import MegaphoneCore

#if canImport(Glibc)
import Glibc
#endif

/// A connected pair of non-blocking stream sockets: `server` plays the accepted client socket.
struct SocketPair: ~Copyable {
    let server: CInt
    let client: CInt

    init() throws {
        var fds: [CInt] = [0, 0]
        try #require(socketpair(AF_UNIX, CInt(SOCK_STREAM.rawValue) | CInt(SOCK_NONBLOCK.rawValue), 0, &fds) == 0)
        server = fds[0]
        client = fds[1]
    }

    deinit {
        close(server)
        close(client)
    }
}

struct SocketTransportTests {
    @Test func plainFillStopsAtAShortReadAndSaysTheSocketIsEmpty() throws {
        let pair = try SocketPair()
        send(pair.client, "hello")
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 64, alignment: 1)
        defer { buffer.deallocate() }
        let (filled, end) = SocketTransport.plain.fill(pair.server, buffer, peerClosed: false)
        #expect(filled == 5)
        guard case .open(let readable) = end else { Issue.record("expected .open, got \(end)"); return }
        #expect(!readable)
        #expect(Array(buffer[0..<5]) == Array("hello".utf8))
    }

    @Test func plainFillOfAFullBufferLeavesTheSocketReadable() throws {
        let pair = try SocketPair()
        send(pair.client, "0123456789")
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 4, alignment: 1)
        defer { buffer.deallocate() }
        let (filled, end) = SocketTransport.plain.fill(pair.server, buffer, peerClosed: false)
        #expect(filled == 4)
        guard case .open(let readable) = end else { Issue.record("expected .open, got \(end)"); return }
        #expect(readable)
    }

    @Test func plainFillOfAHalfClosedClientReadsOnToTheEOF() throws {
        let pair = try SocketPair()
        send(pair.client, "bye")
        shutdown(pair.client, CInt(SHUT_WR))
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 64, alignment: 1)
        defer { buffer.deallocate() }
        let (filled, end) = SocketTransport.plain.fill(pair.server, buffer, peerClosed: true)
        #expect(filled == 3)
        guard case .eof = end else { Issue.record("expected .eof, got \(end)"); return }
    }

    @Test func plainWriteReportsWouldBlockWhenTheSocketIsFull() throws {
        let pair = try SocketPair()
        let bytes = [UInt8](repeating: 0x61, count: 1 << 16)
        var blocked = false
        for _ in 0..<1_000 where !blocked {
            let outcome = bytes.withUnsafeBytes { SocketTransport.plain.write(pair.server, $0) }
            switch outcome {
            case .wrote(let n): #expect(n > 0)
            case .wouldBlock: blocked = true
            case .failed(let reason, _): Issue.record("write failed: \(reason)")
            }
        }
        #expect(blocked)
        #expect(!SocketTransport.plain.holdsInput)
        #expect(!SocketTransport.plain.writeMayWaitForRead)
    }
}
