import Testing

@testable import MegaphoneCore

@Suite struct MetricsRequestTests {
    private func judge(_ text: String, max: Int = 8192) -> MetricsRequest.Verdict {
        MetricsRequest.judge(Array(text.utf8), maxSize: max)
    }

    @Test func servesGetMetrics() {
        #expect(judge("GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n") == .metrics)
        #expect(judge("GET /metrics?name[]=up HTTP/1.0\r\n\r\n") == .metrics)
        #expect(judge("GET /metrics HTTP/1.1\n\n") == .metrics)
    }

    @Test func waitsForTheWholeHead() {
        #expect(judge("") == .incomplete)
        #expect(judge("GET /met") == .incomplete)
        #expect(judge("GET /metrics HTTP/1.1\r\n") == .incomplete)
        #expect(judge("GET /metrics HTTP/1.1\r\nHost: x\r\n") == .incomplete)
        #expect(judge("GET /metrics HTTP/1.1\r\nHost: x\r\n\r") == .incomplete)
    }

    @Test func otherPathsAndMethods() {
        #expect(judge("GET / HTTP/1.1\r\n\r\n") == .error(.notFound))
        #expect(judge("GET /metricsx HTTP/1.1\r\n\r\n") == .error(.notFound))
        #expect(judge("POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n") == .error(.methodNotAllowed))
        #expect(judge("HEAD /metrics HTTP/1.1\r\n\r\n") == .error(.methodNotAllowed))
    }

    @Test func garbageIsABadRequestAtOnce() {
        // A TLS ClientHello: binary before any line end.
        #expect(MetricsRequest.judge([0x16, 0x03, 0x01, 0x00, 0xA5], maxSize: 8192) == .error(.badRequest))
        #expect(judge("hello\r\n") == .error(.badRequest))
        #expect(judge("GET /metrics\r\n") == .error(.badRequest))
        #expect(judge("GET  /metrics HTTP/1.1\r\n") == .error(.badRequest))
        #expect(judge("GET metrics HTTP/1.1\r\n") == .error(.badRequest))
        #expect(judge("GET /metrics HTTP/2.0\r\n") == .error(.badRequest))
        #expect(judge("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n") == .error(.badRequest))
        #expect(judge("G(T /metrics HTTP/1.1\r\n") == .error(.badRequest))
        #expect(judge("GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n") == .error(.badRequest))
        #expect(judge("GET /metrics HTTP/1.1\r\n: empty name\r\n\r\n") == .error(.badRequest))
        #expect(MetricsRequest.judge(Array("GET /metrics HTTP/1.1\r\nA: \u{1}\r\n\r\n".utf8), maxSize: 8192)
                == .error(.badRequest))
    }

    @Test func oversizedHeadsAreRefused() {
        let long = "GET /metrics HTTP/1.1\r\nX: " + String(repeating: "a", count: 100)
        #expect(judge(long, max: 64) == .error(.headerTooLarge))
        #expect(judge("GET /" + String(repeating: "a", count: 100), max: 64) == .error(.headerTooLarge))
        #expect(judge(long + "\r\n\r\n", max: 64) == .error(.headerTooLarge))
        #expect(judge(long + "\r\n\r\n", max: 8192) == .metrics)
    }

    @Test func responses() {
        let text = String(decoding: HTTPStatus.methodNotAllowed.response(), as: UTF8.self)
        #expect(text.hasPrefix("HTTP/1.1 405 Method Not Allowed\r\n"))
        #expect(text.contains("\r\nAllow: GET\r\n"))
        #expect(text.contains("\r\nConnection: close\r\n\r\n"))
        let ok = String(decoding: HTTPStatus.ok.response(contentType: PrometheusText.contentType, body: "é\n"),
                        as: UTF8.self)
        #expect(ok.contains("\r\nContent-Length: 3\r\n"))
        #expect(ok.contains("\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"))
    }

    @Test func hostPort() {
        #expect(SocketAddress(hostPort: "127.0.0.1:9464") == SocketAddress(ip: .loopbackIPv4, port: 9464))
        #expect(SocketAddress(hostPort: "localhost:0") == SocketAddress(ip: .loopbackIPv4, port: 0))
        #expect(SocketAddress(hostPort: "0.0.0.0:1") == SocketAddress(ip: .anyIPv4, port: 1))
        #expect(SocketAddress(hostPort: "[::1]:9464")?.ip.bytes == Array(repeating: 0, count: 15) + [1])
        for bad in ["", "9464", "127.0.0.1", "127.0.0.1:", "127.0.0.1:65536", "127.0.0.1:-1", "::1:9464",
                    "[::1]", "host.example:80", "1.2.3:80", "127.0.0.1:+80", "[]:80", "127.0.0.1:0x10"] {
            #expect(SocketAddress(hostPort: bad) == nil, "\(bad)")
        }
    }
}
