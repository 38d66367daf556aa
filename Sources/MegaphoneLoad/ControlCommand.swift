/// One line of stdin: the orchestrator's commands (README: "megaphone-load").
enum ControlCommand: Equatable {
    case login
    case status
    /// `send FROM TO TOKEN`: user FROM (a local, live session) sends TOKEN to user TO.
    case send(from: Int, to: Int, token: String)
    /// `ping INFLIGHT`: every live session pings the server, at most INFLIGHT waiting at a time.
    case ping(inflight: Int)
    case close
    /// A blank line: ignored.
    case blank
    /// Not a command we know: `error unknown-command TEXT`.
    case unknown(String)
    /// A known command with wrong arguments: `error bad-arguments TEXT`.
    case badArguments(String)

    static func parse(_ line: String) -> ControlCommand {
        let words = line.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\r" }).map(String.init)
        guard let verb = words.first else { return .blank }
        let args = words.dropFirst()
        switch verb {
        case "login", "status", "close":
            guard args.isEmpty else { return .badArguments(line) }
            return verb == "login" ? .login : verb == "status" ? .status : .close
        case "send":
            guard args.count == 3, let from = Self.index(args[args.startIndex]),
                  let to = Self.index(args[args.startIndex + 1]) else { return .badArguments(line) }
            return .send(from: from, to: to, token: args[args.startIndex + 2])
        case "ping":
            guard args.count == 1, let n = Self.index(args[args.startIndex]), n > 0 else {
                return .badArguments(line)
            }
            return .ping(inflight: n)
        default:
            return .unknown(line)
        }
    }

    /// A non-negative decimal of at most 18 digits.
    private static func index(_ word: String) -> Int? {
        guard !word.isEmpty, word.utf8.count <= 18, word.utf8.allSatisfy({ $0 >= 48 && $0 <= 57 }) else { return nil }
        return Int(word)
    }
}
