import Synchronization

/// The node's metrics, read at scrape time from what the node already keeps: the relaxed atomics of
/// `Counters` and of the two `ByteBudget`s, which every thread updates anyway for `stats`.
///
/// Why no metrics library (swift-metrics with swift-prometheus): their counters are objects of their
/// own that the code would have to increment next to ours, on the reactors' read and write paths (a
/// second atomic add per read, per write, per close), or be fed from ours through a collector that
/// copies values at scrape time, which is what this type does without the dependency. Reading the
/// existing atomics from the metrics thread costs the client hot path nothing: no store, lock, syscall
/// or allocation is added there.
///
/// The names follow what `megaphone:stats/1` reports, so that a dashboard and the Erlang shell agree:
/// each value here is the `stats` value named in its help.
public struct NodeMetrics: Sendable {
    public let counters: Counters
    /// Client bytes on their way to the distribution thread (`stats`: `dist_queue_*`).
    public let toErlang: ByteBudget
    /// put_data/send_data bytes on their way to the reactors (`stats`: `request_queue_*`).
    public let toClients: ByteBudget
    /// Whether to add the `process_*` metrics (off in tests that compare exact text).
    public var includeProcess: Bool

    public init(counters: Counters, toErlang: ByteBudget, toClients: ByteBudget, includeProcess: Bool = true) {
        self.counters = counters
        self.toErlang = toErlang
        self.toClients = toClients
        self.includeProcess = includeProcess
    }

    /// How `megaphone_tls_handshakes_total{result}` is read: `ok` from the reactors' count of
    /// completed handshakes, the ways one ends badly from the close reasons. A client that hangs up
    /// during its handshake is counted as `client_closed`, not here; `starttls_refused` (a STARTTLS
    /// listener's client that never asked for TLS) never began one.
    public static let tlsHandshakeResults: [(result: String, reason: CloseReason)] = [
        ("failed", .tlsError),
        ("timeout", .handshakeTimeout),
        ("refused", .handshakeLimit),
    ]

    public func families() -> [MetricFamily] {
        let c = counters
        func load(_ atomic: borrowing Atomic<Int>) -> MetricValue { .int(atomic.load(ordering: .relaxed)) }
        var families: [MetricFamily] = [
            MetricFamily("megaphone_connections", .gauge,
                         help: "Open client connections by the transport of the listener that accepted them, "
                             + "TLS handshakes included (stats: connections_by_transport).",
                         samples: Transport.allCases.map {
                             .init(labels: [.init("transport", $0.rawValue)], .int(c.connections(via: $0)))
                         }),
            MetricFamily("megaphone_connections_accepted_total", .counter,
                         help: "Client connections accepted and admitted (stats: accepted).",
                         value: load(c.accepted)),
            MetricFamily("megaphone_connections_closed_total", .counter,
                         help: "Client connections closed or refused, by reason (stats: closed).",
                         samples: CloseReason.allCases.map {
                             .init(labels: [.init("reason", $0.name)], .int(c.closedCount($0)))
                         }),
            MetricFamily("megaphone_bytes_received_total", .counter,
                         help: "Bytes read from clients, after TLS (stats: bytes_in).",
                         value: load(c.bytesIn)),
            MetricFamily("megaphone_bytes_sent_total", .counter,
                         help: "Bytes written to clients, before TLS (stats: bytes_out).",
                         value: load(c.bytesOut)),
            MetricFamily("megaphone_chunks_delivered_total", .counter,
                         help: "Chunks of client bytes handed to their owners (stats: chunks_delivered).",
                         value: load(c.chunksDelivered)),
            MetricFamily("megaphone_elements_delivered_total", .counter,
                         help: "Top-level XML elements parsed by the node and sent to sessions (stats: elements_delivered).",
                         value: load(c.elementsDelivered)),
            MetricFamily("megaphone_idle_notices_total", .counter,
                         help: "megaphone_idle notices sent to sessions of connections that went quiet (stats: idle_notices).",
                         value: load(c.idleNotices)),
            MetricFamily("megaphone_stream_errors_total", .counter,
                         help: "Client streams the node's parser refused (stats: stream_errors).",
                         value: load(c.streamErrors)),
            MetricFamily("megaphone_tls_handshakes_total", .counter,
                         help: "TLS handshakes by result: ok (stats: tls_handshakes), failed (closed.tls_error), "
                             + "timeout (closed.handshake_timeout), refused (closed.handshake_limit).",
                         samples: [.init(labels: [.init("result", "ok")], load(c.tlsHandshakes))]
                             + Self.tlsHandshakeResults.map {
                                 .init(labels: [.init("result", $0.result)], .int(c.closedCount($0.reason)))
                             }),
            readToSend(),
            MetricFamily("megaphone_dist_queue_bytes", .gauge,
                         help: "Client bytes waiting for the distribution link (stats: dist_queue_bytes).",
                         value: .int(toErlang.queuedBytes)),
            MetricFamily("megaphone_dist_queue_peak_bytes", .gauge,
                         help: "The most client bytes that ever waited for the distribution link (stats: dist_queue_peak).",
                         value: .int(toErlang.peakBytes)),
            MetricFamily("megaphone_dist_queue_limit_bytes", .gauge,
                         help: "The bound on client bytes waiting for the distribution link (--dist-queue-limit).",
                         value: .int(toErlang.limit)),
            MetricFamily("megaphone_client_reads_paused_total", .counter,
                         help: "Times a reactor left a client unread because the distribution queue was full (stats: reads_paused).",
                         value: .int(toErlang.pausedReadCount)),
            MetricFamily("megaphone_request_queue_bytes", .gauge,
                         help: "put_data/send_data bytes waiting for the reactors (stats: request_queue_bytes).",
                         value: .int(toClients.queuedBytes)),
            MetricFamily("megaphone_request_queue_peak_bytes", .gauge,
                         help: "The most put_data/send_data bytes that ever waited for the reactors (stats: request_queue_peak).",
                         value: .int(toClients.peakBytes)),
            MetricFamily("megaphone_request_reads_paused_total", .counter,
                         help: "Times the distribution thread stopped reading toClients until the reactors caught up (stats: request_reads_paused).",
                         value: .int(toClients.pausedReadCount)),
            MetricFamily("megaphone_controllers", .gauge,
                         help: "Controllers attached: processes that sent start and whose node is connected (stats: controllers).",
                         value: load(c.controllers)),
            MetricFamily("megaphone_dist_handshakes_total", .counter,
                         help: "Connections to the distribution port by handshake result: ok (stats: dist_handshakes), "
                             + "failed (dist_handshakes_failed), timeout (dist_handshake_timeouts), "
                             + "refused (dist_handshakes_refused: too many at once).",
                         samples: [
                             .init(labels: [.init("result", "ok")], load(c.distHandshakes)),
                             .init(labels: [.init("result", "failed")], load(c.distHandshakesFailed)),
                             .init(labels: [.init("result", "timeout")], load(c.distHandshakeTimeouts)),
                             .init(labels: [.init("result", "refused")], load(c.distHandshakesRefused)),
                         ]),
            MetricFamily("megaphone_net_tick_timeouts_total", .counter,
                         help: "Erlang nodes dropped after net_ticktime of silence (stats: net_tick_timeouts).",
                         value: load(c.netTickTimeouts)),
            MetricFamily("megaphone_dist_output_overflows_total", .counter,
                         help: "Erlang nodes dropped because too much output waited for them (stats: dist_output_overflows).",
                         value: load(c.distOutputOverflows)),
            MetricFamily("megaphone_malformed_requests_total", .counter,
                         help: "Distribution messages that were not a valid request (stats: malformed_requests).",
                         value: load(c.malformedRequests)),
            MetricFamily("megaphone_unknown_connection_requests_total", .counter,
                         help: "Requests naming a connection the node does not hold (stats: unknown_connection).",
                         value: load(c.unknownConnection)),
            MetricFamily("megaphone_undeliverable_total", .counter,
                         help: "Messages for an Erlang node that is not connected (stats: undeliverable).",
                         value: load(c.undeliverable)),
            MetricFamily("megaphone_certificate_loads_total", .counter,
                         help: "TLS certificate loads by result: ok (stats: certificate_loads), failed (certificate_load_failures).",
                         samples: [
                             .init(labels: [.init("result", "ok")], load(c.certificateLoads)),
                             .init(labels: [.init("result", "failed")], load(c.certificateLoadFailures)),
                         ]),
        ]
        if includeProcess { families += ProcessMetrics.families() }
        return families
    }

    /// `megaphone_read_to_send_seconds`: from the reactor turn that read a client's input (a chunk,
    /// or a parsed batch of elements) to the distribution thread's write of it to ejabberd's node.
    private func readToSend() -> MetricFamily {
        let h = counters.readToSend.snapshot()
        return .histogram("megaphone_read_to_send_seconds",
                          help: "Seconds from the reactor's read of client input to its send on the distribution link.",
                          bounds: LatencyHistogram.boundsNanos.map { Double($0) / 1e9 },
                          cumulative: h.cumulative, sum: Double(h.sumNanos) / 1e9)
    }

    /// The exposition text of `families()`.
    public func render() -> String {
        PrometheusText.render(families())
    }
}
