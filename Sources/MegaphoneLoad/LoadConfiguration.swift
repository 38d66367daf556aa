import MegaphoneCore

/// What one megaphone-load process does: which users it logs in, where, and how fast.
public struct LoadConfiguration: Sendable {
    /// The XMPP server (a Megaphone node's listener or ejabberd's own c2s port).
    public var server: SocketAddress
    /// The local address every connection is bound to before connecting (nil: the kernel picks).
    /// Ephemeral ports are per source address, so each process of a big run gets its own.
    public var source: IPAddress?
    /// Users `first ..< first + count`.
    public var first: Int
    public var count: Int
    /// Logins in flight at once.
    public var concurrency: Int
    public var domain: String
    public var resource: String
    public var userPrefix: String
    public var passwordPrefix: String
    /// Seconds between `progress` lines while logging in.
    public var progressSeconds: Double
    /// Seconds from a login's connect to its presence echo before it counts as failed (`timeout`).
    public var loginTimeoutSeconds: Double
    /// Seconds a `ping` command waits for one session's answer.
    public var pingTimeoutSeconds: Double = 30
    /// Bytes the server may send in one stanza (the parser's `maxStanzaSize`).
    public var maxStanzaSize: Int = 1 << 20
    /// Bytes that may wait in one session's output before it is given up (`send-queue-full`).
    public var outputLimit: Int = 1 << 20
    /// Size of the one read buffer the loop shares between sessions. Tests make it tiny so that
    /// every stanza arrives in many reads.
    public var readBufferSize: Int = 64 << 10

    public init(server: SocketAddress, source: IPAddress? = nil, first: Int = 1, count: Int = 1,
                concurrency: Int = 50, domain: String = "localhost", resource: String = "r",
                userPrefix: String = "xb", passwordPrefix: String = "pw", progressSeconds: Double = 2,
                loginTimeoutSeconds: Double = 120) {
        self.server = server
        self.source = source
        self.first = first
        self.count = count
        self.concurrency = concurrency
        self.domain = domain
        self.resource = resource
        self.userPrefix = userPrefix
        self.passwordPrefix = passwordPrefix
        self.progressSeconds = progressSeconds
        self.loginTimeoutSeconds = loginTimeoutSeconds
    }
}
