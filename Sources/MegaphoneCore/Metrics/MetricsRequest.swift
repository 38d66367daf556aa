/// What the metrics endpoint makes of the bytes of an HTTP request received so far. The bytes are
/// input from anyone who can reach the port: nothing here traps on them.
///
/// Only `GET /metrics` (a query string is allowed and ignored) over HTTP/1.0 or 1.1 is served. The
/// request line is judged as soon as it is complete, so that garbage (a TLS ClientHello, a stray
/// protocol) is answered at once instead of at the deadline; the rest of the head is only checked for
/// `Name: value` lines and its end, the blank line.
public enum MetricsRequest {
    public enum Verdict: Equatable, Sendable {
        /// The head is not complete yet: read more (until the size bound or the deadline).
        case incomplete
        /// `GET /metrics`: answer with the metrics.
        case metrics
        /// Answer with this error status and close.
        case error(HTTPStatus)
    }

    static let path = "/metrics"

    /// The verdict on everything received so far; `.incomplete` only while fewer than `maxSize` bytes are in.
    public static func judge(_ bytes: [UInt8], maxSize: Int) -> Verdict {
        guard let lineEnd = bytes.firstIndex(of: UInt8(ascii: "\n")) else {
            if bytes.count >= maxSize { return .error(.headerTooLarge) }
            return bytes.allSatisfy(isLineByte) ? .incomplete : .error(.badRequest)
        }
        guard let line = RequestLine(bytes[..<lineEnd]) else { return .error(.badRequest) }
        guard let headEnd = endOfHead(bytes, from: lineEnd) else {
            return bytes.count >= maxSize ? .error(.headerTooLarge) : .incomplete
        }
        guard headEnd <= maxSize else { return .error(.headerTooLarge) }
        // Header lines: each `Name: value`, no control bytes.
        for field in bytes[(lineEnd + 1)..<headEnd].split(separator: UInt8(ascii: "\n")) {
            let field = field.last == UInt8(ascii: "\r") ? field.dropLast() : field
            if field.isEmpty { continue }
            guard let colon = field.firstIndex(of: UInt8(ascii: ":")), colon > field.startIndex,
                  field[..<colon].allSatisfy(isTokenByte), field.allSatisfy(isLineByte)
            else { return .error(.badRequest) }
        }
        guard line.method == "GET" else { return .error(.methodNotAllowed) }
        guard line.path == path else { return .error(.notFound) }
        return .metrics
    }

    /// `METHOD SP TARGET SP HTTP/1.x`, with an optional CR at the end.
    struct RequestLine {
        var method: String
        /// The target without its query string.
        var path: String

        init?(_ bytes: ArraySlice<UInt8>) {
            let line = bytes.last == UInt8(ascii: "\r") ? bytes.dropLast() : bytes
            let parts = line.split(separator: UInt8(ascii: " "), omittingEmptySubsequences: false)
            guard parts.count == 3 else { return nil }
            let method = parts[0], target = parts[1], version = parts[2]
            guard !method.isEmpty, method.allSatisfy(isTokenByte) else { return nil }
            guard target.first == UInt8(ascii: "/"), target.allSatisfy({ $0 > 0x20 && $0 < 0x7F }) else { return nil }
            guard version.elementsEqual("HTTP/1.1".utf8) || version.elementsEqual("HTTP/1.0".utf8) else { return nil }
            self.method = String(decoding: method, as: UTF8.self)
            let pathEnd = target.firstIndex(of: UInt8(ascii: "?")) ?? target.endIndex
            path = String(decoding: target[..<pathEnd], as: UTF8.self)
        }
    }

    /// The index just past the blank line that ends the head (`\r\n\r\n`, or bare `\n\n`), looking from
    /// the end of the request line.
    private static func endOfHead(_ bytes: [UInt8], from lineEnd: Int) -> Int? {
        var i = lineEnd
        // `i` is at a `\n`; the head ends when the next line is empty.
        while i < bytes.count {
            var j = i + 1
            if j < bytes.count, bytes[j] == UInt8(ascii: "\r") { j += 1 }
            if j < bytes.count, bytes[j] == UInt8(ascii: "\n") { return j + 1 }
            guard let next = bytes[(i + 1)...].firstIndex(of: UInt8(ascii: "\n")) else { return nil }
            i = next
        }
        return nil
    }

    /// Visible ASCII, space, tab and CR: what a request line or header line may hold.
    private static func isLineByte(_ b: UInt8) -> Bool {
        (b >= 0x20 && b < 0x7F) || b == UInt8(ascii: "\t") || b == UInt8(ascii: "\r")
    }

    /// RFC 9110 `tchar`.
    private static func isTokenByte(_ b: UInt8) -> Bool {
        switch b {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
             UInt8(ascii: "0")...UInt8(ascii: "9"):
            return true
        default:
            return "!#$%&'*+-.^_`|~".utf8.contains(b)
        }
    }
}

/// The statuses the metrics endpoint answers with.
public enum HTTPStatus: Int, Equatable, Sendable {
    case ok = 200
    case badRequest = 400
    case notFound = 404
    case methodNotAllowed = 405
    case headerTooLarge = 431
    case unavailable = 503

    public var reason: String {
        switch self {
        case .ok: "OK"
        case .badRequest: "Bad Request"
        case .notFound: "Not Found"
        case .methodNotAllowed: "Method Not Allowed"
        case .headerTooLarge: "Request Header Fields Too Large"
        case .unavailable: "Service Unavailable"
        }
    }

    /// A whole response: status line, `Content-Type`, `Content-Length`, `Connection: close`, body.
    public func response(contentType: String = "text/plain; charset=utf-8", body: String? = nil) -> [UInt8] {
        let body = Array((body ?? "\(rawValue) \(reason)\n").utf8)
        var head = "HTTP/1.1 \(rawValue) \(reason)\r\n"
        head += "Content-Type: \(contentType)\r\n"
        head += "Content-Length: \(body.count)\r\n"
        if self == .methodNotAllowed { head += "Allow: GET\r\n" }
        head += "Connection: close\r\n\r\n"
        return Array(head.utf8) + body
    }
}
