/// Several controllers share one node's listeners and limits: a `start` from one more controller must
/// ask for what the node already runs with.
extension StartOptions {
    /// The names of the options (as `start` spells them) in which `self` and `other` differ. Every
    /// option is node-wide except `controller`, which names the sender's own process: the listeners
    /// and TLS settings (one socket per port), the limits (counted per node, not per controller), the
    /// per-connection settings (a connection must not behave differently by the node it lands on), the
    /// parser (the sessions' socket mode) and `balance` itself.
    public func disagreements(with other: StartOptions) -> [String] {
        var names: [String] = []
        func check<T: Equatable>(_ name: String, _ a: T, _ b: T) { if a != b { names.append(name) } }
        check("listen", Set(listeners), Set(other.listeners))
        check("certfile", certfile, other.certfile)
        check("ciphers", ciphers, other.ciphers)
        check("tls_min_version", tlsMinVersion13, other.tlsMinVersion13)
        check("handshake_timeout", handshakeTimeoutMillis, other.handshakeTimeoutMillis)
        check("max_handshakes_per_ip", maxHandshakesPerIP, other.maxHandshakesPerIP)
        check("max_connections", maxConnections, other.maxConnections)
        check("max_connections_per_ip", maxConnectionsPerIP, other.maxConnectionsPerIP)
        check("connection_rate_per_ip", connectionRatePerIP, other.connectionRatePerIP)
        check("stream_header_timeout", streamHeaderTimeoutMillis, other.streamHeaderTimeoutMillis)
        check("announce_timeout", announceTimeoutMillis, other.announceTimeoutMillis)
        check("max_chunk", maxChunk, other.maxChunk)
        check("send_queue_limit", sendQueueLimit, other.sendQueueLimit)
        check("input_buffer_limit", inputBufferLimit, other.inputBufferLimit)
        check("parser", parser, other.parser)
        check("max_stanza_size", maxStanzaSize, other.maxStanzaSize)
        check("window", window, other.window)
        check("hibernate_after", hibernateAfterMillis, other.hibernateAfterMillis)
        check("balance", balance, other.balance)
        return names
    }
}
