import MegaphoneXML

/// What a reactor runs with; replaced as a whole by every `start`.
public struct ReactorConfig: Sendable {
    /// Who hears of new connections (`megaphone_connect`), and how one is picked.
    public var controllers: ControllerSet
    public var maxConnections: Int
    public var maxChunk: Int
    public var sendQueueLimit: Int
    public var inputBufferLimit: Int
    /// How long a closing connection may take to flush its output.
    public var flushTimeoutMillis: Int64 = 5_000
    /// For `tls` and `starttls` listeners; nil when `start` named no certfile.
    public var tls: TLSContext?
    /// How long a client may take from connecting to a finished TLS handshake.
    public var handshakeTimeoutMillis: Int64
    public var maxHandshakesPerIP: Int
    /// Open connections per client address (`.max`: no limit); see `AddressLimiter`.
    public var maxConnectionsPerIP: Int
    /// New connections per client address and period; nil: no limit.
    public var connectionRate: ConnectionRate?
    /// How long an announced connection may go without a complete stream header; nil: no limit.
    public var streamHeaderTimeoutMillis: Int64?
    /// How long an announced connection may go without a get_data; nil: no limit.
    public var announceTimeoutMillis: Int64?
    /// Whether new connections are parsed by the node (`InputMode.parsed`), with these bounds and
    /// this many elements in flight before the session grants more.
    public var parser: InputMode
    public var xmlLimits: XMLStreamLimits
    public var window: Int
    /// How long a connection moves no byte before its owner hears `megaphone_idle`; nil: never.
    public var hibernateAfterMillis: Int64?

    /// One controller, counting its sessions on its own (tests, and a node with one controller).
    public init(controller: PidRef, options: StartOptions, tls: TLSContext? = nil) {
        let controllers = controller.isNone ? [] : [controller]
        self.init(controllers: ControllerSet(controllers: controllers, balance: options.balance, sessions: SessionCounts()),
                  options: options, tls: tls)
    }

    public init(controllers: ControllerSet, options: StartOptions, tls: TLSContext? = nil) {
        self.controllers = controllers
        maxConnections = options.maxConnections
        maxChunk = options.maxChunk
        sendQueueLimit = options.sendQueueLimit
        inputBufferLimit = options.inputBufferLimit
        handshakeTimeoutMillis = Int64(options.handshakeTimeoutMillis)
        maxHandshakesPerIP = options.maxHandshakesPerIP
        maxConnectionsPerIP = options.maxConnectionsPerIP
        connectionRate = options.connectionRatePerIP
        streamHeaderTimeoutMillis = options.streamHeaderTimeoutMillis.map(Int64.init)
        announceTimeoutMillis = options.announceTimeoutMillis.map(Int64.init)
        parser = options.parser
        xmlLimits = XMLStreamLimits(maxStanzaSize: options.maxStanzaSize)
        window = options.window
        hibernateAfterMillis = options.hibernateAfterMillis.map(Int64.init)
        self.tls = tls
    }
}

/// Work for a reactor, posted by the distribution thread.
public enum ReactorCommand: Sendable {
    case configure(ReactorConfig)
    case addListener(Listener)
    /// A connection another reactor accepted and hands over, because this one has fewer.
    case adopt(fd: CInt, listener: Listener)
    case removeListener(Listener)
    /// `get_data`: `owner` wants the next chunk.
    case getData(owner: PidRef, connID: UInt64)
    /// `put_data`; errors go to `replyTo`.
    case putData(replyTo: PidRef?, connID: UInt64, bytes: [UInt8])
    case sendData(connID: UInt64, bytes: [UInt8])
    case close(connID: UInt64)
    /// `credit`: the owner of a parsed connection may take `elements` more.
    case credit(connID: UInt64, elements: Int)
    /// `reset_stream`: parse what comes next as a new stream.
    case resetStream(connID: UInt64)
    /// `shaper`: read at most `rate.0` bytes a second, bursts of `rate.1`; nil: no limit.
    case shaper(connID: UInt64, rate: (Int, Int)?)
    /// The distribution queue has drained: read the sockets left unread while it was full.
    case resumeReads
    /// The distribution link to this node is gone: close the connections its processes own.
    case nodeDown(node: UInt16)
    /// A controller left while its node stays up: flush and close the connections that node's
    /// processes own, telling each owner `tcp_closed`.
    case release(node: UInt16)
    /// Stop accepting, flush and close everything telling the owners, then report `.drained`.
    case shutdown
}

/// What a reactor hands back to the distribution thread.
public enum ReactorOutput: Sendable {
    case send(to: PidRef, Event)
    /// The reactor has closed its last connection after `.shutdown` and stopped.
    case drained(reactor: Int)
    /// The `count` client inputs before this in the same post were read from `readAt`
    /// (`monotonicNanos`) on: the distribution thread times their send from it.
    case clientInput(readAt: Int64, count: Int)
}
