/// A node's options file (`megaphone --config FILE`): one option per line, as on the command line
/// without its dashes, e.g.
///
///     # /etc/megaphone/megaphone.conf
///     log-level = debug
///     threads = 2
///     metrics-listen = 127.0.0.1:9464
///
/// Blank lines and lines starting with `#` are skipped; a value may be quoted with `"` or `'` (the
/// quotes are dropped). Names are checked here only for their shape; which names exist, and what
/// values they take, is the command line parser's job (the file becomes arguments before the
/// command line's own, so the command line wins).
public struct OptionsFile: Equatable, Sendable {
    public struct Entry: Equatable, Sendable {
        public var name: String
        public var value: String
        public var line: Int
    }

    public var entries: [Entry]

    /// A file's problem, with its path and line.
    public struct ParseError: Error, CustomStringConvertible, Equatable {
        public let description: String
    }

    /// Files larger than this are refused: an options file is a few lines.
    public static let maxBytes = 64 << 10

    public init(parsing text: String, path: String = "options file") throws(ParseError) {
        var entries: [Entry] = []
        var seen: [String: Int] = [:]
        for (i, rawLine) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = i + 1
            let content = rawLine.trimmingWhitespace
            if content.isEmpty || content.hasPrefix("#") { continue }
            guard let eq = content.firstIndex(of: "=") else {
                throw ParseError(description: "\(path):\(line): expected `option = value`")
            }
            let name = content[..<eq].trimmingWhitespace
            var value = content[content.index(after: eq)...].trimmingWhitespace
            guard !name.isEmpty, name.utf8.count <= 64,
                  name.utf8.allSatisfy({ ($0 >= UInt8(ascii: "a") && $0 <= UInt8(ascii: "z"))
                                          || ($0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9")) || $0 == UInt8(ascii: "-") }),
                  !name.hasPrefix("-")
            else {
                throw ParseError(description: "\(path):\(line): `\(name)` is not an option name (write it as on the command line, without --)")
            }
            guard name != "config" else {
                throw ParseError(description: "\(path):\(line): an options file cannot name another one")
            }
            if let earlier = seen[name] {
                throw ParseError(description: "\(path):\(line): `\(name)` is set already on line \(earlier)")
            }
            if value.count >= 2, let first = value.first, first == "\"" || first == "'", value.last == first {
                value = String(value.dropFirst().dropLast())
            }
            seen[name] = line
            entries.append(Entry(name: name, value: value, line: line))
        }
        self.entries = entries
    }

    /// Reads and parses `path`.
    public init(contentsOf path: String) throws(ParseError) {
        let bytes: [UInt8]
        do {
            bytes = try SmallFile.read(path, maxBytes: Self.maxBytes)
        } catch .cannotOpen(let why) {
            throw ParseError(description: "cannot read options file \(path): \(why)")
        } catch {
            throw ParseError(description: "options file \(path) is larger than \(Self.maxBytes) bytes")
        }
        guard let text = String(validating: bytes, as: UTF8.self) else {
            throw ParseError(description: "options file \(path) is not UTF-8")
        }
        try self.init(parsing: text, path: path)
    }

    /// `--name value` for each entry, in order.
    public var arguments: [String] {
        entries.flatMap { ["--" + $0.name, $0.value] }
    }

    /// The value of `name`, if the file sets it.
    public subscript(name: String) -> String? {
        entries.first { $0.name == name }?.value
    }
}
