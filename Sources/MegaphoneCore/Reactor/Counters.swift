import Synchronization

/// Why a connection ended (or was refused), as counted in `stats` under `closed`.
public enum CloseReason: Int, CaseIterable, Sendable {
    case clientClosed, clientError, requested, sendQueueFull, nodeDown, shutdown, flushTimeout
    case maxConnections, emfile
    /// TLS: a failed handshake or TLS error; no handshake by the deadline; a STARTTLS listener's client
    /// that tried anything but STARTTLS; too many unfinished handshakes from one IP.
    case tlsError, handshakeTimeout, starttlsRefused, handshakeLimit
    /// Limits at the edge: too many open connections from one address; connecting faster than
    /// `connection_rate_per_ip` allows; no complete stream header within `stream_header_timeout`.
    case maxConnectionsPerIP, connectionRate, streamHeaderTimeout
    /// Announced with `megaphone_connect` and never asked for data within `announce_timeout`.
    case announceTimeout

    /// The atom used in `stats` and logs.
    public var name: String {
        switch self {
        case .clientClosed: "client_closed"
        case .clientError: "client_error"
        case .requested: "requested"
        case .sendQueueFull: "send_queue_full"
        case .nodeDown: "node_down"
        case .shutdown: "shutdown"
        case .flushTimeout: "flush_timeout"
        case .maxConnections: "max_connections"
        case .emfile: "emfile"
        case .tlsError: "tls_error"
        case .handshakeTimeout: "handshake_timeout"
        case .starttlsRefused: "starttls_refused"
        case .handshakeLimit: "handshake_limit"
        case .maxConnectionsPerIP: "max_connections_per_ip"
        case .connectionRate: "connection_rate_per_ip"
        case .streamHeaderTimeout: "stream_header_timeout"
        case .announceTimeout: "announce_timeout"
        }
    }
}

/// Process-wide counters, updated by every thread with relaxed atomics and read by `stats`.
public final class Counters: Sendable {
    public let connections = Atomic<Int>(0)
    public let accepted = Atomic<Int>(0)
    public let bytesIn = Atomic<Int>(0)
    public let bytesOut = Atomic<Int>(0)
    public let chunksDelivered = Atomic<Int>(0)
    /// Parsed connections: top-level elements sent to sessions, and streams the parser refused
    /// (not well-formed, restricted XML, too big).
    public let elementsDelivered = Atomic<Int>(0)
    public let streamErrors = Atomic<Int>(0)
    /// `megaphone_idle` notices sent (each quiet spell of a connection, once).
    public let idleNotices = Atomic<Int>(0)
    public let malformedRequests = Atomic<Int>(0)
    public let unknownConnection = Atomic<Int>(0)
    public let undeliverable = Atomic<Int>(0)
    /// TLS certificates loaded (each start with a certfile, each SIGHUP), and loads that failed.
    public let certificateLoads = Atomic<Int>(0)
    public let certificateLoadFailures = Atomic<Int>(0)
    /// TLS handshakes completed (the ways one ends badly are close reasons).
    public let tlsHandshakes = Atomic<Int>(0)
    /// Time from the reactor turn that read a client's input to the distribution thread's send of it.
    public let readToSend = LatencyHistogram()
    /// Erlang nodes dropped because nothing, not even a tick, came from them for net_ticktime.
    public let netTickTimeouts = Atomic<Int>(0)
    /// Connections to the distribution port: handshakes completed, failed (wrong cookie, not an Erlang
    /// node, closed), not completed within the deadline, and closed unheard because too many were running.
    public let distHandshakes = Atomic<Int>(0)
    public let distHandshakesFailed = Atomic<Int>(0)
    public let distHandshakeTimeouts = Atomic<Int>(0)
    public let distHandshakesRefused = Atomic<Int>(0)
    /// Erlang nodes dropped because more output waited for them than the per-peer bound.
    public let distOutputOverflows = Atomic<Int>(0)
    /// Controllers attached (processes that sent `start` and whose node is still connected), one per
    /// ejabberd node of a cluster. Set by the distribution thread; read by `stats` and the metrics endpoint.
    public let controllers = Atomic<Int>(0)
    private let closedCounts: [AtomicCell] = CloseReason.allCases.map { _ in AtomicCell() }
    /// Connections in the table by the transport of the listener that accepted them (handshakes in
    /// progress included); `connections` also counts the moments between accept and the table.
    private let byTransport: [AtomicCell] = Transport.allCases.map { _ in AtomicCell() }

    public init() {}

    /// The plain counters by their `stats` key, in a fixed order.
    public func snapshot() -> [(key: String, value: Int)] {
        [
            ("connections", connections.load(ordering: .relaxed)),
            ("accepted", accepted.load(ordering: .relaxed)),
            ("bytes_in", bytesIn.load(ordering: .relaxed)),
            ("bytes_out", bytesOut.load(ordering: .relaxed)),
            ("chunks_delivered", chunksDelivered.load(ordering: .relaxed)),
            ("elements_delivered", elementsDelivered.load(ordering: .relaxed)),
            ("stream_errors", streamErrors.load(ordering: .relaxed)),
            ("idle_notices", idleNotices.load(ordering: .relaxed)),
            ("malformed_requests", malformedRequests.load(ordering: .relaxed)),
            ("unknown_connection", unknownConnection.load(ordering: .relaxed)),
            ("undeliverable", undeliverable.load(ordering: .relaxed)),
            ("certificate_loads", certificateLoads.load(ordering: .relaxed)),
            ("certificate_load_failures", certificateLoadFailures.load(ordering: .relaxed)),
            ("net_tick_timeouts", netTickTimeouts.load(ordering: .relaxed)),
            ("dist_handshakes", distHandshakes.load(ordering: .relaxed)),
            ("dist_handshakes_failed", distHandshakesFailed.load(ordering: .relaxed)),
            ("dist_handshake_timeouts", distHandshakeTimeouts.load(ordering: .relaxed)),
            ("dist_handshakes_refused", distHandshakesRefused.load(ordering: .relaxed)),
            ("dist_output_overflows", distOutputOverflows.load(ordering: .relaxed)),
            ("controllers", controllers.load(ordering: .relaxed)),
            ("tls_handshakes", tlsHandshakes.load(ordering: .relaxed)),
        ]
    }

    public func closed(_ reason: CloseReason) {
        closedCounts[reason.rawValue].value.add(1, ordering: .relaxed)
    }

    public func closedCount(_ reason: CloseReason) -> Int {
        closedCounts[reason.rawValue].value.load(ordering: .relaxed)
    }

    func opened(via transport: Transport) {
        byTransport[transport.index].value.add(1, ordering: .relaxed)
    }

    func closed(via transport: Transport) {
        byTransport[transport.index].value.subtract(1, ordering: .relaxed)
    }

    /// Open connections accepted by listeners of `transport`.
    public func connections(via transport: Transport) -> Int {
        byTransport[transport.index].value.load(ordering: .relaxed)
    }

}

/// One relaxed counter in a box: Atomic is not copyable, so an array of them needs one.
final class AtomicCell: Sendable {
    let value = Atomic<Int>(0)
}

extension Transport {
    /// The position in `allCases`, for arrays indexed by transport.
    var index: Int {
        switch self {
        case .tcp: 0
        case .starttls: 1
        case .tls: 2
        }
    }
}
