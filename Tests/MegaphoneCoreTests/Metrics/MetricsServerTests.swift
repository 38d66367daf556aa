import Logging
import Testing

@testable import MegaphoneCore

#if canImport(Glibc)
import Glibc
#endif

/// A blocking loopback client of the metrics endpoint.
private final class ScrapeClient {
    let fd: CInt

    init(_ address: SocketAddress) throws {
        fd = socket(AF_INET, CInt(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw SystemError(errno: errno, call: "socket") }
        let rc = address.withSockaddr { connect(fd, $0, $1) }
        guard rc == 0 else {
            close(fd)
            throw SystemError(errno: errno, call: "connect")
        }
    }

    deinit { close(fd) }

    func send(_ text: String) { send(Array(text.utf8)) }

    func send(_ bytes: [UInt8]) {
        var sent = 0
        while sent < bytes.count {
            let n = bytes[sent...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, CInt(MSG_NOSIGNAL)) }
            if n <= 0 { return }
            sent += n
        }
    }

    /// Everything until EOF (or a reset), or nil if the connection is still open after `millis`.
    func readToEnd(within millis: Int64) -> [UInt8]? {
        let deadline = monotonicMillis() + millis
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let left = deadline - monotonicMillis()
            guard left > 0 else { return nil }
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&p, 1, CInt(left)) > 0 else { continue }
            let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n <= 0 { return bytes }
            bytes += buffer[0..<n]
        }
    }

    func response(within millis: Int64 = 5_000) -> String? {
        readToEnd(within: millis).map { String(decoding: $0, as: UTF8.self) }
    }
}

@Suite struct MetricsServerTests {
    private static let request = "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: test\r\n\r\n"

    private func server(_ limits: MetricsServer.Limits = MetricsServer.Limits()) throws -> MetricsServer {
        let server = try MetricsServer(address: SocketAddress(ip: .loopbackIPv4, port: 0), limits: limits,
                                       logger: Logger(label: "test")) {
            "# HELP t_total Test.\n# TYPE t_total counter\nt_total 1\n"
        }
        try server.start()
        return server
    }

    @Test func servesMetricsAndCloses() throws {
        let server = try server()
        defer { server.stop() }
        let client = try ScrapeClient(server.address)
        client.send(Self.request)
        let response = try #require(client.response())
        #expect(response.hasPrefix("HTTP/1.1 200 OK\r\n"))
        #expect(response.contains("\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"))
        #expect(response.contains("\r\nConnection: close\r\n"))
        #expect(response.hasSuffix("\r\n\r\n# HELP t_total Test.\n# TYPE t_total counter\nt_total 1\n"))
    }

    @Test func aSilentClientIsClosedAtTheDeadlineWhileOthersAreServed() throws {
        let server = try server(MetricsServer.Limits(deadlineMillis: 2_000))
        defer { server.stop() }
        let start = monotonicMillis()
        let silent = try ScrapeClient(server.address)
        // A client that drips one byte at a time is held to the same deadline.
        let drip = try ScrapeClient(server.address)
        drip.send("G")
        for _ in 0..<3 {
            let other = try ScrapeClient(server.address)
            other.send(Self.request)
            #expect(other.response(within: 500)?.hasPrefix("HTTP/1.1 200 OK\r\n") == true)
            drip.send("E")
        }
        #expect(monotonicMillis() - start < 1_800, "the scrapes were served without waiting for the silent one")
        let closed = silent.readToEnd(within: 6_000)
        #expect(closed == [], "closed without an answer")
        #expect(drip.readToEnd(within: 1_000) == [])
        let waited = monotonicMillis() - start
        #expect(waited >= 1_900 && waited < 5_000, "closed at the deadline, after \(waited) ms")
    }

    @Test func garbageGets400() throws {
        let server = try server()
        defer { server.stop() }
        let tls = try ScrapeClient(server.address)
        tls.send([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xFC, 0x03, 0x03])
        #expect(tls.response(within: 2_000)?.hasPrefix("HTTP/1.1 400 Bad Request\r\n") == true)
        let text = try ScrapeClient(server.address)
        text.send("hello there\r\n\r\n")
        #expect(text.response(within: 2_000)?.hasPrefix("HTTP/1.1 400 Bad Request\r\n") == true)
        let other = try ScrapeClient(server.address)
        other.send("GET /other HTTP/1.1\r\n\r\n")
        #expect(other.response(within: 2_000)?.hasPrefix("HTTP/1.1 404 Not Found\r\n") == true)
        let post = try ScrapeClient(server.address)
        post.send("POST /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello")
        let answer = post.response(within: 2_000)
        #expect(answer?.hasPrefix("HTTP/1.1 405 Method Not Allowed\r\n") == true)
        #expect(answer?.contains("\r\nAllow: GET\r\n") == true)
    }

    @Test func anOversizedRequestIsRefused() throws {
        let server = try server(MetricsServer.Limits(maxRequestBytes: 8 << 10))
        defer { server.stop() }
        let client = try ScrapeClient(server.address)
        // 64 KiB of header that never ends: answered once 8 KiB are in, the rest read and dropped.
        client.send("GET /metrics HTTP/1.1\r\nX-Long: " + String(repeating: "a", count: 64 << 10))
        let response = client.response(within: 3_000)
        #expect(response?.hasPrefix("HTTP/1.1 431 Request Header Fields Too Large\r\n") == true)
        // And the endpoint goes on.
        let next = try ScrapeClient(server.address)
        next.send(Self.request)
        #expect(next.response()?.hasPrefix("HTTP/1.1 200 OK\r\n") == true)
    }

    @Test func concurrentScrapersAreBounded() throws {
        let server = try server(MetricsServer.Limits(deadlineMillis: 10_000, maxClients: 2))
        defer { server.stop() }
        var idle = [try ScrapeClient(server.address), try ScrapeClient(server.address)]
        idle[0].send("GET /metrics HTTP/1.1\r\n")
        // Both idle ones taken before the next arrives.
        usleep(200_000)
        let third = try ScrapeClient(server.address)
        third.send(Self.request)
        #expect(third.response(within: 2_000)?.hasPrefix("HTTP/1.1 503 Service Unavailable\r\n") == true)
        // A slot frees when a client goes away.
        idle.removeAll()
        usleep(200_000)
        let fourth = try ScrapeClient(server.address)
        fourth.send(Self.request)
        #expect(fourth.response(within: 2_000)?.hasPrefix("HTTP/1.1 200 OK\r\n") == true)
    }

    @Test func aPortInUseFailsAtInit() throws {
        let server = try server()
        defer { server.stop() }
        #expect(throws: SystemError.self) {
            _ = try MetricsServer(address: server.address, logger: Logger(label: "test")) { "" }
        }
    }
}
