import Logging

#if canImport(Glibc)
import Glibc
#endif

/// How to run a Megaphone node; filled in from the command line.
public struct ServerConfiguration: Sendable {
    /// The node's alive name (`megaphone` in `megaphone@HOST`).
    public var name: String
    /// The host part of the node name; must match the naming mode of the Erlang nodes (short or long).
    public var host: String
    public var cookie: String
    /// The distribution port; 0 lets the kernel choose.
    public var distPort: Int
    /// The IPv4 address the distribution port listens on; 0.0.0.0 for every interface.
    public var distInterface: IPAddress
    /// Reactor threads (`defaultThreads(cores:)` unless the command line says).
    public var threads: Int
    /// Seconds of silence after which a connected Erlang node is taken for dead (Erlang's net_ticktime).
    public var netTicktime: Int
    /// Client bytes that may wait between the reactors and the distribution thread (`ByteBudget`).
    public var distQueueLimit: Int
    /// Where to serve `GET /metrics` (Prometheus text format); nil: nowhere.
    public var metricsListen: SocketAddress?
    /// Run on the distribution thread at each SIGHUP, after the certificate's reload (the command
    /// line's `--config` re-read: the log level).
    public var onReload: (@Sendable () -> Void)? = nil

    public init(name: String, host: String, cookie: String, distPort: Int, threads: Int, netTicktime: Int,
                distQueueLimit: Int = 64 << 20, distInterface: IPAddress = .loopbackIPv4,
                metricsListen: SocketAddress? = nil) {
        self.metricsListen = metricsListen
        self.distQueueLimit = distQueueLimit
        self.distInterface = distInterface
        self.name = name
        self.host = host
        self.cookie = cookie
        self.distPort = distPort
        self.threads = threads
        self.netTicktime = netTicktime
    }

    /// The default number of reactor threads: one per four cores, at least one. Measured on 2 cores
    /// (README "Reactor threads: the default"): one reactor, run on the distribution thread, logged
    /// in 15,000 users at 1.19–1.31× native's rate against 0.55–0.69× with two, for 14–18 µs of Swift
    /// CPU per message against 25–27 µs. A second reactor costs every message a hand-off between
    /// threads, and the cores it would use are ejabberd's on a shared machine; it pays only where
    /// one reactor runs out of a core.
    public static func defaultThreads(cores: Int) -> Int {
        max(1, cores / 4)
    }

    /// The short host name, as `erl -sname` uses it: the machine's node name cut at the first dot.
    public static func defaultHost() -> String {
        var u = utsname()
        uname(&u)
        let nodename = withUnsafeBytes(of: &u.nodename) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        return String(nodename.split(separator: ".").first ?? "localhost")
    }
}

/// Wires the C node, the reactors and the distribution thread together and runs until shutdown.
public enum Server {
    /// Starts everything and serves on the calling thread. Returns after a graceful shutdown.
    public static func run(_ configuration: ServerConfiguration, logger: Logger) throws {
        // Before any thread starts, so that all inherit the mask and only the signalfd sees them.
        DistributionLink.blockSignals()
        let node = try CNode(alive: configuration.name, host: configuration.host, cookie: configuration.cookie,
                             distPort: configuration.distPort, interface: configuration.distInterface, logger: logger)
        node.warnIfUnreachable(host: configuration.host, logger: logger)
        // One reactor runs on the distribution thread itself: no hand-off between threads, no eventfd.
        let inline = configuration.threads == 1
        let context = NodeContext(
            output: try Mailbox<ReactorOutput>(signalling: !inline), counters: Counters(),
            toErlang: ByteBudget(limit: configuration.distQueueLimit),
            // The distribution thread stops reading requests while the reactors are behind on these,
            // and sleeps until they have taken the budget back under its limit.
            toClients: ByteBudget(limit: configuration.distQueueLimit, roomSignal: try EventFD()),
            logger: logger)
        // Bound before the node's other threads start, so that a port in use fails the start.
        let metrics = try configuration.metricsListen.map { address throws(SystemError) in
            let source = NodeMetrics(counters: context.counters, toErlang: context.toErlang,
                                     toClients: context.toClients)
            return try MetricsServer(address: address, logger: logger) { source.render() }
        }
        var reactors: [Reactor] = []
        for index in 0..<configuration.threads {
            reactors.append(try Reactor(index: index, context: context, inline: inline))
        }
        for reactor in reactors { reactor.siblings = reactors }
        let link = try DistributionLink(node: node, reactors: reactors, inline: inline ? reactors.first : nil,
                                        context: context, netTicktimeSeconds: configuration.netTicktime,
                                        onReload: configuration.onReload)
        if !inline {
            for reactor in reactors {
                _ = try PThread.spawn(name: "reactor-\(reactor.index)") { reactor.run() }
            }
        }
        try metrics?.start()
        link.run()
        metrics?.stop()
    }
}
