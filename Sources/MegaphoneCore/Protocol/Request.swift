/// A client transport: plain TCP, STARTTLS done by Megaphone before hand-over, or direct TLS (XEP-0368).
public enum Transport: String, Sendable, Hashable, CaseIterable {
    case tcp
    case starttls
    case tls
}

/// One listener of a `start` request: `{Transport, IP, Port}`.
public struct ListenerSpec: Hashable, Sendable, CustomStringConvertible {
    public var transport: Transport
    public var ip: IPAddress
    public var port: UInt16

    public init(transport: Transport, ip: IPAddress, port: UInt16) {
        self.transport = transport
        self.ip = ip
        self.port = port
    }

    public var description: String { "\(transport.rawValue) \(SocketAddress(ip: ip, port: port))" }
}

/// The options of `{start, From, Ref, Opts}`. A repeated `start` replaces the whole configuration, so
/// an option left out goes back to its default.
public struct StartOptions: Equatable, Sendable {
    public var listeners: [ListenerSpec] = []
    public var certfile: String? = nil
    /// OpenSSL cipher list for TLS 1.2; nil: `TLSOptions.defaultCiphers`.
    public var ciphers: String? = nil
    public var tlsMinVersion13: Bool = false
    public var handshakeTimeoutMillis: Int = 10_000
    public var maxHandshakesPerIP: Int = 100
    public var maxConnections: Int = .max
    /// Open connections per client address (IPv4, or IPv6 /64); `.max` is `infinity`.
    public var maxConnectionsPerIP: Int = .max
    /// `{Count, PeriodMs}`: new connections per client address; nil is `infinity`.
    public var connectionRatePerIP: ConnectionRate? = nil
    /// Close a connection that has sent no complete stream header this long after it was announced;
    /// nil is `infinity` (the node moves any bytes; only an XMPP controller should set it).
    public var streamHeaderTimeoutMillis: Int? = nil
    /// Close a connection that nobody has asked for data (`get_data`) this long after it was announced
    /// (its controller died, or never meant to take it); nil is `infinity`.
    public var announceTimeoutMillis: Int? = 30_000
    public var maxChunk: Int = 65_536
    public var sendQueueLimit: Int = 1 << 20
    public var inputBufferLimit: Int = 1 << 20
    public var controller: PidRef? = nil
    /// `{parser, ejabberd | megaphone}`: who parses the clients' XML. `ejabberd` (raw bytes,
    /// `{tcp, ConnId, Data}`, one parser per session) or `megaphone` (the node parses and sends
    /// sessions `{'$gen_event', Event}` as fxml_stream would).
    public var parser: InputMode = .raw
    /// `{max_stanza_size, N | infinity}`: the sessions' limit, enforced by the node's parser
    /// (infinity is the node's own bound, `InputMode.stanzaSizeCap`).
    public var maxStanzaSize: Int = InputMode.stanzaSizeCap
    /// `{window, N}`: elements a parsed connection may have in flight to its session before the
    /// session grants more with `credit`.
    public var window: Int = 16
    /// `{hibernate_after, Ms | infinity}`: tell a connection's owner `{megaphone_idle, ConnId}`
    /// once it has moved no byte this long (see `Reactor+Idle.swift`); nil is infinity.
    public var hibernateAfterMillis: Int? = nil
    /// `{balance, round_robin | least_sessions}`: how a new connection picks one of several
    /// controllers (see `Balance`).
    public var balance: Balance = .leastSessions

    public init() {}
}

/// A session's shaper: bytes a second, and the most that may come at once.
public struct ShaperRate: Equatable, Sendable {
    public var bytesPerSecond: Int
    public var burst: Int
}

/// How a connection's input reaches its session.
public enum InputMode: String, Sendable, Equatable {
    /// Chunks of bytes on get_data; ejabberd's own parser runs in the session.
    case raw = "ejabberd"
    /// Stream events parsed by the node, paced by credit.
    case parsed = "megaphone"

    /// The largest stanza the node buffers when the session's limit is `infinity`.
    public static let stanzaSizeCap = 16 << 20
}

/// A request from Erlang, decoded. See the message vocabulary in README.md.
public enum Request: Equatable, Sendable {
    case start(from: PidRef, ref: [UInt8], options: StartOptions)
    case getData(from: PidRef, connID: UInt64)
    case putData(connID: UInt64, bytes: [UInt8])
    case sendData(connID: UInt64, bytes: [UInt8])
    case close(connID: UInt64)
    /// `{credit, ConnId, N}`: the owner of a parsed connection has handled N elements.
    case credit(connID: UInt64, elements: Int)
    /// `{reset_stream, ConnId}`: the next bytes start a new stream (after SASL success).
    case resetStream(connID: UInt64)
    /// `{shaper, ConnId, {Rate, Burst} | none}`: pace a parsed connection's reads.
    case shaper(connID: UInt64, rate: ShaperRate?)
    case shutdown(from: PidRef, ref: [UInt8])
    /// The seed's bare `{shutdown}`: no reply.
    case shutdownQuietly
    case stats(from: PidRef, ref: [UInt8])
}

/// The second element of `{megaphone_error, RefOrConnId, Reason}`.
public enum ErrorTag: Equatable, Sendable {
    case ref([UInt8])
    case connID(UInt64)
    case undefined
}

/// The third element of `{megaphone_error, RefOrConnId, Reason}`.
public enum ErrorReason: Equatable, Sendable, CustomStringConvertible {
    /// `{unknown_request, Tag}`: not a tuple (`Tag` = `undefined`), or an unknown tag or arity.
    case unknownRequest(tag: String?)
    /// `{badarg, Field}`: a field of a known request has the wrong type.
    case badarg(String)
    /// `{badopt, Name}`: an option of `start` is unknown or has a bad value.
    case badopt(String)
    /// `{too_large, Limit}`: data longer than the limit that applies to it.
    case tooLarge(limit: Int)
    /// `unknown_connection`: no open connection has this ConnId (also: a ConnId of another node, or of an
    /// earlier run of this one).
    case unknownConnection
    /// `input_buffer_full`: put_data would grow the pending input past `input_buffer_limit`.
    case inputBufferFull
    /// `{listen_failed, {Transport, IP, Port}, Errno}`.
    case listenFailed(ListenerSpec, errno: String)
    /// `{bad_certfile, Reason}`: the TLS context could not be built from the certfile (Reason is text).
    case badCertfile(String)
    /// `shutting_down`: the node is draining and takes no new work.
    case shuttingDown
    /// `{config_mismatch, [Name]}`: a `start` from one more controller names options that differ from
    /// those the attached controllers run with; nothing changed.
    case configMismatch([String])

    public var description: String {
        switch self {
        case .unknownRequest(let tag): "{unknown_request, \(tag ?? "undefined")}"
        case .badarg(let field): "{badarg, \(field)}"
        case .badopt(let name): "{badopt, \(name)}"
        case .tooLarge(let limit): "{too_large, \(limit)}"
        case .unknownConnection: "unknown_connection"
        case .inputBufferFull: "input_buffer_full"
        case .listenFailed(let spec, let errno): "{listen_failed, \(spec), \(errno)}"
        case .badCertfile(let why): "{bad_certfile, \"\(why)\"}"
        case .shuttingDown: "shutting_down"
        case .configMismatch(let names): "{config_mismatch, [\(names.joined(separator: ", "))]}"
        }
    }
}

/// A request that could not be decoded, with what is known of where the error reply goes.
public struct RequestError: Error, Equatable, Sendable {
    /// The request's own From when it decoded as a pid; else the caller falls back to the sender.
    public var replyTo: PidRef?
    public var tag: ErrorTag
    public var reason: ErrorReason
    /// The request is one that is never answered (`send_data`, `close`): count it, reply nothing.
    public var quiet: Bool = false
}

/// Limits that apply while decoding.
public struct RequestLimits: Sendable {
    /// The largest `Data` of put_data (beyond it: `{too_large, Limit}`).
    public var maxPutData: Int
    /// The largest `Data` of send_data that is decoded; the send queue limit applies after that.
    public var maxSendData: Int

    public init(maxPutData: Int, maxSendData: Int = .max) {
        self.maxPutData = maxPutData
        self.maxSendData = maxSendData
    }
}

extension Request {
    /// Decodes one message (starting with the version byte). Throws `RequestError` for anything that
    /// is not a well-formed request; never traps on input.
    /// `refs` tells this node's ConnIds from any other reference.
    public static func decode(
        _ buffer: UnsafeRawBufferPointer, nodes: NodeNames, refs: ConnectionRefs, limits: RequestLimits
    ) throws(RequestError) -> Request {
        var r = TermReader(buffer)
        var decoder = RequestDecoder(nodes: nodes, refs: refs)
        return try decoder.decode(&r, limits: limits)
    }
}

/// Walks one request, remembering the From/Ref/ConnId it has seen so that an error reply can name them.
private struct RequestDecoder {
    let nodes: NodeNames
    let refs: ConnectionRefs
    var replyTo: PidRef? = nil
    var tag: ErrorTag = .undefined

    init(nodes: NodeNames, refs: ConnectionRefs) {
        self.nodes = nodes
        self.refs = refs
    }

    func fail(_ reason: ErrorReason) -> RequestError {
        RequestError(replyTo: replyTo, tag: tag, reason: reason)
    }

    mutating func decode(_ r: inout TermReader, limits: RequestLimits) throws(RequestError) -> Request {
        let arity: Int
        let name: String
        do {
            try r.readVersion()
            arity = try r.readTupleHeader()
            guard arity >= 1 else { throw fail(.unknownRequest(tag: nil)) }
            name = try r.readAtom()
        } catch let e as RequestError {
            throw e
        } catch {
            throw fail(.unknownRequest(tag: nil))
        }
        switch (name, arity) {
        case ("start", 4):
            let from = try pid(&r)
            let ref = try refTerm(&r)
            let options = try startOptions(&r)
            return .start(from: from, ref: ref, options: options)
        case ("get_data", 3):
            let from = try pid(&r)
            let id = try connID(&r)
            return .getData(from: from, connID: try known(id, quiet: false))
        case ("put_data", 3):
            let id = try connID(&r)
            let bytes = try data(&r, limit: limits.maxPutData)
            return .putData(connID: try known(id, quiet: false), bytes: bytes)
        case ("send_data", 3):
            let id = try connID(&r)
            let bytes = try data(&r, limit: limits.maxSendData)
            return .sendData(connID: try known(id, quiet: true), bytes: bytes)
        case ("close", 2):
            return .close(connID: try known(try connID(&r), quiet: true))
        case ("credit", 3):
            let id = try connID(&r)
            guard let n = try? r.readInt(), n > 0, n <= 1 << 20 else { throw fail(.badarg("credit")) }
            return .credit(connID: try known(id, quiet: true), elements: n)
        case ("reset_stream", 2):
            return .resetStream(connID: try known(try connID(&r), quiet: true))
        case ("shaper", 3):
            let id = try connID(&r)
            var rate: ShaperRate? = nil
            if isAtom(r) {
                guard (try? r.readAtom()) == "none" else { throw fail(.badarg("shaper")) }
            } else {
                guard (try? r.readTupleHeader()) == 2, let bytes = try? r.readInt(), let burst = try? r.readInt(),
                      bytes > 0, burst > 0 else { throw fail(.badarg("shaper")) }
                rate = ShaperRate(bytesPerSecond: bytes, burst: burst)
            }
            return .shaper(connID: try known(id, quiet: true), rate: rate)
        case ("shutdown", 3):
            let from = try pid(&r)
            return .shutdown(from: from, ref: try refTerm(&r))
        case ("shutdown", 1):
            return .shutdownQuietly
        case ("stats", 3):
            let from = try pid(&r)
            return .stats(from: from, ref: try refTerm(&r))
        default:
            throw fail(.unknownRequest(tag: name))
        }
    }

    mutating func pid(_ r: inout TermReader) throws(RequestError) -> PidRef {
        guard let decoded = try? r.readPid(), let ref = nodes.pidRef(decoded) else { throw fail(.badarg("from")) }
        replyTo = ref
        return ref
    }

    mutating func refTerm(_ r: inout TermReader) throws(RequestError) -> [UInt8] {
        guard let range = try? r.skipTerm() else { throw fail(.badarg("ref")) }
        let bytes = Array(r.buffer[range])
        tag = .ref(bytes)
        return bytes
    }

    /// A ConnId: a reference, anything else is `{badarg, conn_id}`. Returns the connection's id when
    /// this node minted the reference in this run, nil for any other reference (see `known`).
    mutating func connID(_ r: inout TermReader) throws(RequestError) -> UInt64? {
        let start = r.offset
        guard let ref = try? r.readReference() else { throw fail(.badarg("conn_id")) }
        guard let id = refs.id(of: ref, in: r.buffer) else {
            tag = .ref(Array(r.buffer[start..<r.offset]))
            return nil
        }
        tag = .connID(id)
        return id
    }

    /// Once the whole request is well-formed: a reference of another node or run names a connection that
    /// is not (or no longer) here, `unknown_connection`, answered as the request's own unknown
    /// connections are (`quiet` for the requests that are never answered).
    func known(_ id: UInt64?, quiet: Bool) throws(RequestError) -> UInt64 {
        guard let id else {
            var error = fail(.unknownConnection)
            error.quiet = quiet
            throw error
        }
        return id
    }

    func data(_ r: inout TermReader, limit: Int) throws(RequestError) -> [UInt8] {
        do {
            return try r.readIOData(limit: limit)
        } catch .tooLarge {
            throw fail(.tooLarge(limit: limit))
        } catch {
            throw fail(.badarg("data"))
        }
    }

    mutating func startOptions(_ r: inout TermReader) throws(RequestError) -> StartOptions {
        var options = StartOptions()
        guard let count = try? r.readListHeader() else { throw fail(.badarg("opts")) }
        for _ in 0..<count {
            try option(&r, into: &options)
        }
        if count > 0 {
            guard (try? r.readNil()) != nil else { throw fail(.badarg("opts")) }
        }
        return options
    }

    /// One `{Name, Value}` of the start options.
    mutating func option(_ r: inout TermReader, into options: inout StartOptions) throws(RequestError) {
        guard (try? r.readTupleHeader()) == 2, let name = try? r.readAtom() else { throw fail(.badarg("opts")) }
        switch name {
        case "listen":
            guard let count = try? r.readListHeader() else { throw fail(.badopt(name)) }
            var specs: [ListenerSpec] = []
            for _ in 0..<count {
                guard let spec = try? Self.listenerSpec(&r) else { throw fail(.badopt(name)) }
                specs.append(spec)
            }
            if count > 0 { guard (try? r.readNil()) != nil else { throw fail(.badopt(name)) } }
            options.listeners = specs
        case "certfile":
            guard let path = try? r.readIOData(limit: 4096), !path.isEmpty else { throw fail(.badopt(name)) }
            options.certfile = String(decoding: path, as: UTF8.self)
        case "max_connections":
            options.maxConnections = try positiveOrInfinity(&r, name) ?? .max
        case "max_connections_per_ip":
            options.maxConnectionsPerIP = try positiveOrInfinity(&r, name) ?? .max
        case "connection_rate_per_ip":
            if isAtom(r) {
                guard (try? r.readAtom()) == "infinity" else { throw fail(.badopt(name)) }
                options.connectionRatePerIP = nil
            } else {
                guard (try? r.readTupleHeader()) == 2 else { throw fail(.badopt(name)) }
                let count = try positive(&r, name, max: 1_000_000)
                let period = try positive(&r, name, max: 3_600_000)
                options.connectionRatePerIP = ConnectionRate(count: count, periodMillis: period)
            }
        case "stream_header_timeout":
            options.streamHeaderTimeoutMillis = try positiveOrInfinity(&r, name, max: 3_600_000)
        case "announce_timeout":
            options.announceTimeoutMillis = try positiveOrInfinity(&r, name, max: 3_600_000)
        case "ciphers":
            guard let text = try? r.readIOData(limit: 4096), !text.isEmpty else { throw fail(.badopt(name)) }
            options.ciphers = String(decoding: text, as: UTF8.self)
        case "tls_min_version":
            switch try? r.readAtom() {
            case "tlsv1.2": options.tlsMinVersion13 = false
            case "tlsv1.3": options.tlsMinVersion13 = true
            default: throw fail(.badopt(name))
            }
        case "handshake_timeout":
            options.handshakeTimeoutMillis = try positive(&r, name, max: 3_600_000)
        case "max_handshakes_per_ip":
            options.maxHandshakesPerIP = try positive(&r, name)
        case "max_chunk":
            options.maxChunk = try positive(&r, name, max: 16 << 20)
        case "send_queue_limit":
            options.sendQueueLimit = try positive(&r, name)
        case "input_buffer_limit":
            options.inputBufferLimit = try positive(&r, name)
        case "parser":
            guard let mode = (try? r.readAtom()).flatMap(InputMode.init(rawValue:)) else { throw fail(.badopt(name)) }
            options.parser = mode
        case "max_stanza_size":
            options.maxStanzaSize = try positiveOrInfinity(&r, name, max: InputMode.stanzaSizeCap) ?? InputMode.stanzaSizeCap
        case "window":
            options.window = try positive(&r, name, max: 1 << 16)
        case "hibernate_after":
            options.hibernateAfterMillis = try positiveOrInfinity(&r, name, max: 86_400_000)
        case "balance":
            guard let balance = (try? r.readAtom()).flatMap(Balance.init(rawValue:)) else { throw fail(.badopt(name)) }
            options.balance = balance
        case "controller":
            guard let decoded = try? r.readPid(), let pid = nodes.pidRef(decoded) else { throw fail(.badopt(name)) }
            options.controller = pid
        default:
            throw fail(.badopt(name))
        }
    }

    func isAtom(_ r: TermReader) -> Bool {
        let tag = r.peekTag()
        return tag == ExternalTag.smallAtomUTF8 || tag == ExternalTag.atomUTF8
            || tag == ExternalTag.smallAtom || tag == ExternalTag.atom
    }

    /// A positive integer up to `max`, or nil for the atom `infinity`; anything else is `{badopt, Name}`.
    func positiveOrInfinity(_ r: inout TermReader, _ name: String, max: Int = .max) throws(RequestError) -> Int? {
        guard isAtom(r) else { return try positive(&r, name, max: max) }
        guard (try? r.readAtom()) == "infinity" else { throw fail(.badopt(name)) }
        return nil
    }

    func positive(_ r: inout TermReader, _ name: String, max: Int = .max) throws(RequestError) -> Int {
        guard let v = try? r.readInt(), v > 0, v <= max else { throw fail(.badopt(name)) }
        return v
    }

    /// `{Transport, IP, Port}` where IP is an `inet:ip_address()` tuple or `any`.
    static func listenerSpec(_ r: inout TermReader) throws(TermError) -> ListenerSpec {
        guard try r.readTupleHeader() == 3 else { throw .badValue }
        guard let transport = Transport(rawValue: try r.readAtom()) else { throw .badValue }
        let ip: IPAddress
        if r.peekTag() == ExternalTag.smallTuple {
            let n = try r.readTupleHeader()
            var bytes: [UInt8] = []
            switch n {
            case 4:
                for _ in 0..<4 {
                    let v = try r.readInt()
                    guard v <= 255 else { throw .badValue }
                    bytes.append(UInt8(v))
                }
            case 8:
                for _ in 0..<8 {
                    let v = try r.readInt()
                    guard v <= 0xFFFF else { throw .badValue }
                    bytes.append(UInt8(v >> 8))
                    bytes.append(UInt8(v & 0xFF))
                }
            default:
                throw .badValue
            }
            guard let address = IPAddress(bytes: bytes) else { throw .badValue }
            ip = address
        } else {
            guard try r.readAtom() == "any" else { throw .badValue }
            ip = .anyIPv4
        }
        let port = try r.readInt()
        guard port <= 65_535 else { throw .badValue }
        return ListenerSpec(transport: transport, ip: ip, port: UInt16(port))
    }
}
