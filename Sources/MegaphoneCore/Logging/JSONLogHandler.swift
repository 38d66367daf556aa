import Logging

#if canImport(Glibc)
import Glibc
#endif

/// A swift-log handler that writes one JSON object per line, for log shippers (`--log-format json`):
/// `{"ts":"2026-12-03T08:50:00.123Z","level":"info","label":"megaphone","msg":"Started",
/// "source":"MegaphoneCore", ...metadata}`. Metadata keys become fields as they are (`connection.id`);
/// a field whose name is one of the fixed ones is prefixed with `meta.`. Values are strings, arrays or
/// objects, as swift-log's metadata values are.
///
/// Lines go to standard error with one `write(2)` each, under a lock, so lines of several threads never
/// interleave. Logging is off the hot path (nothing there logs at `info`).
public struct JSONLogHandler: LogHandler {
    public var logLevel: Logger.Level = .info
    public var metadata: Logger.Metadata = [:]
    private let label: String
    private let sink: @Sendable (String) -> Void

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    /// Lines to standard error.
    public static func standardError(label: String) -> JSONLogHandler {
        JSONLogHandler(label: label, sink: writeToStandardError)
    }

    /// `sink` receives each line, newline included (tests collect them).
    public init(label: String, sink: @escaping @Sendable (String) -> Void) {
        self.label = label
        self.sink = sink
    }

    public func log(event: LogEvent) {
        var metadata = event.metadata
        if let error = event.error { metadata = (metadata ?? [:]).merging(["error": "\(error)"]) { old, _ in old } }
        log(level: event.level, message: event.message, metadata: metadata, source: event.source,
            file: event.file, function: event.function, line: event.line)
    }

    public func log(level: Logger.Level, message: Logger.Message, metadata explicit: Logger.Metadata?,
                    source: String, file: String, function: String, line: UInt) {
        var fields: [(String, String)] = [
            ("ts", Self.quote(Self.timestamp())),
            ("level", Self.quote(level.rawValue)),
            ("label", Self.quote(label)),
            ("msg", Self.quote(message.description)),
            ("source", Self.quote(source)),
        ]
        let fixed = Set(fields.map(\.0))
        let merged = metadata.merging(explicit ?? [:]) { _, new in new }
        for (key, value) in merged.sorted(by: { $0.key < $1.key }) {
            fields.append((fixed.contains(key) ? "meta." + key : key, Self.json(value)))
        }
        sink("{" + fields.map { Self.quote($0.0) + ":" + $0.1 }.joined(separator: ",") + "}\n")
    }

    static func json(_ value: Logger.Metadata.Value) -> String {
        switch value {
        case .string(let s): return quote(s)
        case .stringConvertible(let c): return quote(c.description)
        case .array(let items): return "[" + items.map(json).joined(separator: ",") + "]"
        case .dictionary(let d):
            return "{" + d.sorted(by: { $0.key < $1.key }).map { quote($0.key) + ":" + json($0.value) }
                .joined(separator: ",") + "}"
        }
    }

    /// A JSON string literal (RFC 8259: quote, backslash and control characters escaped).
    static func quote(_ s: String) -> String {
        var out = "\""
        for scalar in s.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where scalar.value < 0x20:
                let hex = String(scalar.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out + "\""
    }

    /// UTC, milliseconds: `2026-12-03T08:50:00.123Z`.
    static func timestamp() -> String {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        var time = ts.tv_sec
        var parts = tm()
        gmtime_r(&time, &parts)
        func two(_ v: Int32) -> String { v < 10 ? "0\(v)" : "\(v)" }
        let ms = Int(ts.tv_nsec) / 1_000_000
        let millis = ms < 10 ? "00\(ms)" : ms < 100 ? "0\(ms)" : "\(ms)"
        return "\(parts.tm_year + 1900)-\(two(parts.tm_mon + 1))-\(two(parts.tm_mday))T"
            + "\(two(parts.tm_hour)):\(two(parts.tm_min)):\(two(parts.tm_sec)).\(millis)Z"
    }
}

private let standardErrorLock = Locked<Void>(())

@Sendable private func writeToStandardError(_ line: String) {
    standardErrorLock.withLock { _ in
        var line = line
        line.withUTF8 { bytes in
            var offset = 0
            while offset < bytes.count {
                let n = write(STDERR_FILENO, bytes.baseAddress.map { $0 + offset }, bytes.count - offset)
                if n <= 0 { return }
                offset += n
            }
        }
    }
}
