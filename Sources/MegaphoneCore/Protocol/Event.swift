/// A message from Megaphone to an Erlang process. Built by the reactors, encoded and sent by the
/// distribution thread.
public enum Event: Sendable, Equatable {
    /// `{megaphone_connect, NodePid, ConnId, {PeerIP, PeerPort}, {LocalIP, LocalPort}, Transport}`
    case connected(connID: UInt64, peer: SocketAddress, local: SocketAddress, transport: Transport)
    /// `{tcp, ConnId, Binary}`
    case data(connID: UInt64, bytes: [UInt8])
    /// `{'$gen_event', Event}`: a parsed connection's stream event, already encoded (the external
    /// term format of `{xmlstreamelement, El}` and the like, without the version byte).
    case stream(payload: [UInt8])
    /// `{megaphone_restricted_xml, ConnId, Text}`: a parsed client sent XML that XMPP forbids
    /// (comment, processing instruction, DTD, other entity); the session sends `<restricted-xml/>`.
    case restrictedXML(connID: UInt64, text: String)
    /// `{megaphone_idle, ConnId}`: the connection has moved no byte for `hibernate_after`.
    case idle(connID: UInt64)
    /// `{tcp_closed, ConnId}`
    case closed(connID: UInt64)
    /// `{tcp_error, ConnId, Reason}`
    case error(connID: UInt64, reason: String)
    /// `{megaphone_error, RefOrConnId, Reason}`
    case requestError(tag: ErrorTag, reason: ErrorReason)

    /// Encodes the message after what `e` holds (call `reset()` first). `selfPid` encodes the C node's
    /// own pid (for `megaphone_connect`); `refs` turns connection ids into ConnIds.
    /// Client bytes this message carries, which count in the distribution queue (`toErlang`).
    public var clientBytes: Int {
        switch self {
        case .data(_, let bytes): bytes.count
        case .stream(let payload): payload.count
        case .restrictedXML(_, let text): text.utf8.count
        default: 0
        }
    }

    public func encode(into e: TermEncoder, refs: ConnectionRefs, selfPid: (TermEncoder) -> Void) {
        switch self {
        case .connected(let id, let peer, let local, let transport):
            e.tuple(6)
            e.atom("megaphone_connect")
            selfPid(e)
            refs.encode(id, into: e)
            e.address(peer)
            e.address(local)
            e.atom(transport == .tcp ? "tcp" : "tls")
        case .data(let id, let bytes):
            e.tuple(3)
            e.atom("tcp")
            refs.encode(id, into: e)
            e.binary(bytes)
        case .stream(let payload):
            e.tuple(2)
            e.atom("$gen_event")
            e.raw(payload)
        case .restrictedXML(let id, let text):
            e.tuple(3)
            e.atom("megaphone_restricted_xml")
            refs.encode(id, into: e)
            e.binary(Array(text.utf8))
        case .idle(let id):
            e.tuple(2)
            e.atom("megaphone_idle")
            refs.encode(id, into: e)
        case .closed(let id):
            e.tuple(2)
            e.atom("tcp_closed")
            refs.encode(id, into: e)
        case .error(let id, let reason):
            e.tuple(3)
            e.atom("tcp_error")
            refs.encode(id, into: e)
            e.atom(reason)
        case .requestError(let tag, let reason):
            e.tuple(3)
            e.atom("megaphone_error")
            switch tag {
            case .ref(let raw): e.raw(raw)
            case .connID(let id): refs.encode(id, into: e)
            case .undefined: e.atom("undefined")
            }
            reason.encode(into: e)
        }
    }
}

extension ErrorReason {
    func encode(into e: TermEncoder) {
        switch self {
        case .unknownRequest(let tag):
            e.tuple(2)
            e.atom("unknown_request")
            e.atom(tag.map(\.atomPrefix) ?? "undefined")
        case .badarg(let field):
            e.tuple(2)
            e.atom("badarg")
            e.atom(field)
        case .badopt(let name):
            e.tuple(2)
            e.atom("badopt")
            e.atom(name.atomPrefix)
        case .tooLarge(let limit):
            e.tuple(2)
            e.atom("too_large")
            e.int(limit)
        case .unknownConnection:
            e.atom("unknown_connection")
        case .inputBufferFull:
            e.atom("input_buffer_full")
        case .listenFailed(let spec, let errno):
            e.tuple(3)
            e.atom("listen_failed")
            spec.encode(into: e)
            e.atom(errno)
        case .badCertfile(let why):
            e.tuple(2)
            e.atom("bad_certfile")
            e.binary(Array(why.utf8))
        case .shuttingDown:
            e.atom("shutting_down")
        case .configMismatch(let names):
            e.tuple(2)
            e.atom("config_mismatch")
            e.list(names.count)
            for name in names { e.atom(name) }
            e.emptyList()
        }
    }
}

extension ListenerSpec {
    /// `{Transport, IP, Port}`, the form `start` takes.
    public func encode(into e: TermEncoder) {
        e.tuple(3)
        e.atom(transport.rawValue)
        e.ip(ip)
        e.uint(UInt64(port))
    }
}

extension String {
    /// At most 255 code points: the longest atom Erlang decodes. (Not 255 Characters: one Character
    /// can hold any number of combining code points, and ei refuses to encode the longer atom.)
    var atomPrefix: String { String(String.UnicodeScalarView(unicodeScalars.prefix(255))) }
}
