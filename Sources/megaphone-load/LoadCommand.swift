import ArgumentParser
import Logging
import MegaphoneCore
import MegaphoneLoad

#if canImport(Glibc)
import Glibc
#endif

/// The `megaphone-load` command: many logged-in XMPP sessions in one cheap process, driven by
/// commands on stdin (README, "megaphone-load").
@main
struct LoadCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "megaphone-load",
        abstract: "XMPP load client: logs in users PREFIX<first>...PREFIX<first+count-1> and holds their sessions.",
        discussion: """
            Prints `ready pid=PID`, then reads commands on stdin (login, status, send FROM TO TOKEN, \
            ping INFLIGHT, close) and prints one line per event on stdout. Logs go to stderr. \
            End of stdin closes every session and exits 0. See README.md, "megaphone-load".
            """,
        version: "0.1.0"
    )

    @Option(help: ArgumentHelp("The XMPP server's address: an IP address (or localhost) and a port.",
                               valueName: "host:port"))
    var connect: String

    @Option(help: "Local address to connect from (port chosen at connect; default: the kernel's choice).")
    var source: String? = nil

    @Option(help: "Index of the first user.")
    var first: Int = 1

    @Option(help: "Number of users (one connection each; one process may hold 20,000 fds).")
    var count: Int = 1

    @Option(help: "Logins in flight at once.")
    var concurrency: Int = 50

    @Option(help: "XMPP domain.")
    var domain: String = "localhost"

    @Option(help: "Resource every session binds.")
    var resource: String = "r"

    @Option(name: [.customLong("prefix"), .customLong("user-prefix")], help: "User name prefix: user i is PREFIXi.")
    var prefix: String = "xb"

    @Option(help: "Password prefix: user i's password is PREFIXi.")
    var passwordPrefix: String = "pw"

    @Option(help: "Seconds between progress lines while logging in (a fraction is fine).")
    var progressSecs: Double = 2

    @Option(help: "Seconds a login may take, from its connect to its presence echo.")
    var loginTimeout: Double = 120

    @Option(help: "Log level (logs go to stderr).")
    var logLevel: LogLevelOption = .info

    func validate() throws {
        guard SocketAddress(hostPort: connect) != nil else {
            throw ValidationError("--connect must be HOST:PORT with an IP address (or localhost), e.g. 127.0.0.1:5222")
        }
        if let source, parseAddress(source) == nil {
            throw ValidationError("--source must be an IPv4 or IPv6 address")
        }
        guard first >= 0 else { throw ValidationError("--first must be 0 or more") }
        guard (0...1_000_000).contains(count) else { throw ValidationError("--count must be 0...1000000") }
        guard concurrency >= 1 else { throw ValidationError("--concurrency must be at least 1") }
        guard first <= Int(Int32.max) - count else { throw ValidationError("--first + --count is too large") }
        for (name, value) in [("--domain", domain), ("--resource", resource), ("--prefix", prefix)] {
            guard !value.isEmpty, !value.contains(where: { $0.isWhitespace || $0 == "@" || $0 == "/" }) else {
                throw ValidationError("\(name) must be non-empty, without spaces, '@' or '/'")
            }
        }
        guard progressSecs > 0, progressSecs.isFinite else { throw ValidationError("--progress-secs must be positive") }
        guard loginTimeout > 0, loginTimeout.isFinite else { throw ValidationError("--login-timeout must be positive") }
    }

    func run() throws {
        let level = logLevel.level
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "megaphone-load")
        // A vanished orchestrator shows as a failed write to stdout, which ends the run in order.
        signal(SIGPIPE, SIG_IGN)
        raiseFileLimit(logger: logger)
        guard let server = SocketAddress(hostPort: connect) else { throw ValidationError("bad --connect") }
        var configuration = LoadConfiguration(
            server: server, first: first, count: count, concurrency: concurrency, domain: domain,
            resource: resource, userPrefix: prefix, passwordPrefix: passwordPrefix,
            progressSeconds: progressSecs, loginTimeoutSeconds: loginTimeout)
        configuration.source = source.flatMap(parseAddress)
        let client = try LoadClient(configuration: configuration, logger: logger)
        client.run()
    }

    /// Soft fd limit up to the hard one: one fd per session, plus a few.
    private func raiseFileLimit(logger: Logger) {
        var limit = rlimit()
        let resource = __rlimit_resource_t(RLIMIT_NOFILE.rawValue)
        guard getrlimit(resource, &limit) == 0 else { return }
        if limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max
            _ = setrlimit(resource, &limit)
        }
        if limit.rlim_cur < rlim_t(count + 16) {
            logger.warning("The fd limit is below one per session: some logins will fail with emfile",
                           metadata: ["fd.limit": "\(limit.rlim_cur)", "users": "\(count)"])
        }
    }
}

/// An IPv4 or IPv6 address, or nil.
private func parseAddress(_ text: String) -> IPAddress? {
    var v4 = in_addr()
    if inet_pton(AF_INET, text, &v4) == 1 { return IPAddress(bytes: withUnsafeBytes(of: &v4) { Array($0) }) }
    var v6 = in6_addr()
    if inet_pton(AF_INET6, text, &v6) == 1 { return IPAddress(bytes: withUnsafeBytes(of: &v6) { Array($0) }) }
    return nil
}

enum LogLevelOption: String, ExpressibleByArgument, CaseIterable {
    case trace, debug, info, notice, warning, error, critical

    var level: Logger.Level { Logger.Level(rawValue: rawValue) ?? .info }
}
