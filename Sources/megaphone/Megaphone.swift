import ArgumentParser
import Logging
import MegaphoneCore

#if canImport(Glibc)
import Glibc
#endif

/// The `megaphone` command: a hidden Erlang node that terminates XMPP client sockets for ejabberd.
@main
struct Megaphone: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "megaphone",
        abstract: "Hidden Erlang node that holds XMPP client sockets and forwards their bytes to ejabberd.",
        discussion: """
            The node publishes itself in epmd as NAME@HOST (starting epmd if none runs) and waits for an \
            Erlang node with the same cookie to send {start, From, Ref, Opts}. See README.md.
            """,
        version: "0.1.0"
    )

    @Option(help: "Node name (the part before @).")
    var name: String = "megaphone"

    @Option(help: "Host part of the node name; short by default, like erl -sname. Use a dotted name for -name nodes.")
    var host: String? = nil

    @Option(help: "Distribution cookie. Visible in ps; prefer --cookie-file.")
    var cookie: String? = nil

    @Option(help: "File holding the cookie (default when neither is given: ~/.erlang.cookie).")
    var cookieFile: String? = nil

    @Option(help: "Distribution port (0: any free port).")
    var distPort: Int = 0

    @Option(help: "IPv4 address the distribution port listens on (0.0.0.0: every interface), like Erlang's inet_dist_use_interface.")
    var distInterface: String = "127.0.0.1"

    @Option(help: "Log level.")
    var logLevel: LogLevelOption = .info

    @Option(help: "Log line format: text, or json (one object per line, for log shippers).")
    var logFormat: LogFormatOption = .text

    @Option(help: "Reactor threads (default: one per four cores, at least one; with one, the reactor runs on the distribution thread).")
    var threads: Int? = nil

    @Option(help: "Seconds without traffic after which a connected Erlang node counts as gone (its net_ticktime).")
    var netTicktime: Int = 60

    @Option(help: "Bytes of client input that may wait for the distribution link before the node stops reading client sockets.")
    var distQueueLimit: Int = 64 << 20

    @Option(help: ArgumentHelp(
        "Serve GET /metrics (Prometheus text format) on this address, e.g. 127.0.0.1:9464 or [::1]:9464. Off by default.",
        valueName: "host:port"))
    var metricsListen: String? = nil

    @Option(help: ArgumentHelp(
        "Options file: one 'option = value' per line, named as on the command line without '--' (e.g. log-level = debug). "
            + "The command line wins over it. SIGHUP re-reads its log-level; other changes wait for a restart.",
        valueName: "file"))
    var config: String? = nil

    func validate() throws {
        guard !name.isEmpty, name.utf8.count <= 200,
              name.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "_" || $0 == "-") })
        else { throw ValidationError("--name must be letters, digits, '_' or '-'") }
        if let host, host.isEmpty || host.contains("@") { throw ValidationError("--host must be a host name") }
        if cookie != nil && cookieFile != nil { throw ValidationError("give --cookie or --cookie-file, not both") }
        if let cookie, cookie.isEmpty { throw ValidationError("--cookie must not be empty") }
        guard (0...65_535).contains(distPort) else { throw ValidationError("--dist-port must be 0...65535") }
        guard parseIPv4(distInterface) != nil else {
            throw ValidationError("--dist-interface must be an IPv4 address such as 127.0.0.1 or 0.0.0.0")
        }
        if let threads, !(1...Reactor_maxReactors).contains(threads) {
            throw ValidationError("--threads must be 1...\(Reactor_maxReactors)")
        }
        guard netTicktime > 0 else { throw ValidationError("--net-ticktime must be positive") }
        guard distQueueLimit >= 65_536 else { throw ValidationError("--dist-queue-limit must be at least 65536") }
        if let metricsListen, SocketAddress(hostPort: metricsListen) == nil {
            throw ValidationError("--metrics-listen must be HOST:PORT with an IP address (or localhost) and a port 0...65535")
        }
    }

    func run() throws {
        guard let config else { return try serve(file: nil) }
        let file: OptionsFile
        do {
            file = try OptionsFile(contentsOf: config)
        } catch {
            throw StartupError(error.description)
        }
        // The file's options first, the command line's after them: for an option given twice the
        // parser keeps the last value, so the command line wins.
        let merged: Megaphone
        do {
            _ = try Megaphone.parse(file.arguments)
            merged = try Megaphone.parse(file.arguments + Array(CommandLine.arguments.dropFirst()))
        } catch {
            throw StartupError("\(config): \(Megaphone.message(for: error))")
        }
        try merged.serve(file: (config, file))
    }

    /// Whether the command line itself names `option` (then an options file cannot change it).
    private static func commandLineSets(_ option: String) -> Bool {
        CommandLine.arguments.dropFirst().contains { $0 == "--" + option || $0.hasPrefix("--" + option + "=") }
    }

    private func serve(file: (path: String, options: OptionsFile)?) throws {
        let level = SharedLogLevel(logLevel.level)
        switch logFormat {
        case .text:
            LoggingSystem.bootstrap { label in
                var handler = StreamLogHandler.standardError(label: label)
                handler.logLevel = .trace
                return SharedLevelLogHandler(handler, level: level)
            }
        case .json:
            LoggingSystem.bootstrap { label in
                var handler = JSONLogHandler.standardError(label: label)
                handler.logLevel = .trace
                return SharedLevelLogHandler(handler, level: level)
            }
        }
        let logger = Logger(label: "megaphone")
        var configuration = ServerConfiguration(
            name: name,
            host: host ?? ServerConfiguration.defaultHost(),
            cookie: try readCookie(),
            distPort: distPort,
            threads: threads ?? ServerConfiguration.defaultThreads(cores: Int(sysconf(CInt(_SC_NPROCESSORS_ONLN)))),
            netTicktime: netTicktime,
            distQueueLimit: distQueueLimit,
            distInterface: parseIPv4(distInterface) ?? .loopbackIPv4,
            metricsListen: metricsListen.flatMap { SocketAddress(hostPort: $0) }
        )
        if let file {
            let levelOnCommandLine = Self.commandLineSets("log-level")
            configuration.onReload = {
                Self.reload(file.path, startedWith: file.options, levelOnCommandLine: levelOnCommandLine,
                            level: level, logger: logger)
            }
        }
        // Failures (NodeError, SystemError, StartupError) print as one "Error: ..." line and exit 1.
        try Server.run(configuration, logger: logger)
    }

    /// SIGHUP: reads the options file again and applies its log-level (the default level when it no
    /// longer sets one), unless the command line set the level. A file that does not parse changes
    /// nothing. Other options that differ from the start's are named in a warning: they need a restart.
    private static func reload(_ path: String, startedWith start: OptionsFile, levelOnCommandLine: Bool,
                               level: SharedLogLevel, logger: Logger) {
        let now: OptionsFile
        let parsed: Megaphone
        do {
            now = try OptionsFile(contentsOf: path)
            parsed = try Megaphone.parse(now.arguments)
        } catch {
            let why = (error as? OptionsFile.ParseError)?.description ?? Megaphone.message(for: error)
            logger.error("SIGHUP: cannot read the options file; nothing changed",
                         metadata: ["config": "\(path)", "error": "\(why)"])
            return
        }
        let names = Set(start.entries.map(\.name) + now.entries.map(\.name)).subtracting(["log-level"])
        let changed = names.filter { start[$0] != now[$0] }.sorted()
        if !changed.isEmpty {
            logger.warning("SIGHUP: changed options take effect at the next start",
                           metadata: ["config": "\(path)", "options": "\(changed.joined(separator: ","))"])
        }
        if levelOnCommandLine {
            if now["log-level"] != nil {
                logger.notice("SIGHUP: --log-level on the command line wins over the options file",
                              metadata: ["config": "\(path)", "log.level": "\(level.level)"])
            }
            return
        }
        let old = level.level
        let new = parsed.logLevel.level
        // At info, under the lower of the two levels: seen if either level shows info.
        level.set(Swift.min(old, new))
        logger.info("SIGHUP: log level \(old == new ? "unchanged" : "set")",
                    metadata: ["config": "\(path)", "log.level": "\(new)", "log.level.before": "\(old)"])
        level.set(new)
    }

    private func readCookie() throws -> String {
        if let cookie { return cookie }
        let path: String
        if let cookieFile {
            path = cookieFile
        } else if let home = getenv("HOME") {
            path = String(cString: home) + "/.erlang.cookie"
        } else {
            throw ValidationError("give --cookie or --cookie-file")
        }
        let bytes: [UInt8]
        do {
            bytes = try SmallFile.read(path, maxBytes: 4096)
        } catch .cannotOpen(let why) {
            throw StartupError("cannot read cookie file \(path): \(why)")
        } catch {
            throw StartupError("cookie file \(path) is too long")
        }
        let cookie = String(decoding: bytes, as: UTF8.self).trimmingWhitespace
        guard !cookie.isEmpty else { throw StartupError("cookie file \(path) is empty") }
        return cookie
    }
}

/// A dotted-quad IPv4 address, or nil.
private func parseIPv4(_ text: String) -> IPAddress? {
    var address = in_addr()
    guard inet_pton(AF_INET, text, &address) == 1 else { return nil }
    return IPAddress(bytes: withUnsafeBytes(of: &address) { Array($0) })
}

/// A start-up failure, printed as one line.
struct StartupError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

enum LogFormatOption: String, ExpressibleByArgument, CaseIterable {
    case text, json
}

enum LogLevelOption: String, ExpressibleByArgument, CaseIterable {
    case trace, debug, info, notice, warning, error, critical

    var level: Logger.Level { Logger.Level(rawValue: rawValue) ?? .info }
}

private let Reactor_maxReactors = Reactor.maxReactors
