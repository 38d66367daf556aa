import Logging

/// What every thread of a Megaphone node shares: made once by `Server`, handed to each reactor and to
/// the distribution link (all of it is safe to use from any thread).
public struct NodeContext: Sendable {
    /// What the reactors report to the distribution thread.
    public let output: Mailbox<ReactorOutput>
    public let counters: Counters
    /// Unfinished TLS handshakes per client address, across reactors.
    public let handshakes: HandshakeLimiter
    /// Open connections and connection rate per client address, across reactors.
    public let addresses: AddressLimiter
    /// Client bytes on their way to the distribution thread (`--dist-queue-limit`).
    public let toErlang: ByteBudget
    /// put_data and send_data bytes on their way to the reactors.
    public let toClients: ByteBudget
    /// Open announced connections by the node that owns them (`SessionCounts`).
    public let sessions: SessionCounts
    /// Nodes whose connections are not read while they are behind on client bytes (`NodeBacklog`).
    public let backlog: NodeBacklog
    public let logger: Logger

    public init(output: Mailbox<ReactorOutput>, counters: Counters, handshakes: HandshakeLimiter = HandshakeLimiter(),
                addresses: AddressLimiter = AddressLimiter(), toErlang: ByteBudget = ByteBudget(limit: 64 << 20),
                toClients: ByteBudget = ByteBudget(limit: 64 << 20), sessions: SessionCounts = SessionCounts(),
                backlog: NodeBacklog = NodeBacklog(), logger: Logger) {
        self.sessions = sessions
        self.backlog = backlog
        self.output = output
        self.counters = counters
        self.handshakes = handshakes
        self.addresses = addresses
        self.toErlang = toErlang
        self.toClients = toClients
        self.logger = logger
    }
}
