/// The opening stage: what happens between accepting a connection and handing its bytes to the
/// framing stage, and the clocks on it.
///
/// - `starttls` listeners: Megaphone answers the client's plaintext stream header and `<starttls/>`
///   itself (`StartTLSNegotiator`), then the TLS handshake runs; `tls` listeners start at the
///   handshake. Both are under `handshake_timeout` and `max_handshakes_per_ip`. When the handshake is
///   done the connection is announced (`megaphone_connect`) and becomes `.established`.
/// - `tcp` listeners are established at accept.
/// - Once announced, with `stream_header_timeout` set, the bytes on their way to the owner are
///   watched for the end of the client's stream header (`StreamHeaderScanner`); a header that does not
///   come in time gets a `connection-timeout` stream error and a close.
///
/// Per connection the stage holds one byte in the slot (`ConnectionSlot.Opening`); the clocks live
/// here, per reactor, only while a connection is opening.
struct StreamOpening {
    /// Connections not yet handed over (STARTTLS opening or TLS handshake): their deadline and the
    /// client IP whose handshake slot they hold.
    var handshakes: [UInt64: (deadline: Int64, ip: IPAddress)] = [:]
    /// Announced connections whose stream header has not been seen whole yet (only while
    /// `stream_header_timeout` is set): the deadline and the bytes so far (at most
    /// `headerWatchLimit`). An entry lives from the announcement to the header, normally a round trip.
    var headerWatch: [UInt64: (deadline: Int64, seen: [UInt8])] = [:]

    /// Bytes looked at for a header: as many as the STARTTLS opening allows before TLS.
    static let headerWatchLimit = StartTLSNegotiator.maxBytes

    var isEmpty: Bool { handshakes.isEmpty && headerWatch.isEmpty }

    /// Starts the stream header clock of a connection that is being announced, if it is set.
    mutating func watchHeader(_ id: UInt64, now: Int64, config: ReactorConfig) {
        guard let timeout = config.streamHeaderTimeoutMillis else { return }
        headerWatch[id] = (now + timeout, [])
    }

    /// Looks at bytes on their way to the owner for the end of the client's stream header. Once it
    /// is whole (or is not a stream header at all, which ejabberd will refuse itself, or is longer than
    /// `headerWatchLimit`) the clock stops.
    mutating func lookForHeader(_ id: UInt64, in chunk: [UInt8]) {
        guard var watch = headerWatch[id] else { return }
        watch.seen.append(contentsOf: chunk.prefix(Self.headerWatchLimit + 1 - watch.seen.count))
        switch StreamHeaderScanner.scan(watch.seen) {
        case .needMore where watch.seen.count <= Self.headerWatchLimit:
            headerWatch[id] = watch
        case .needMore, .header, .notAHeader:
            headerWatch[id] = nil
        }
    }

    /// Drops a closing connection's clocks; returns the address whose handshake slot it held.
    mutating func forget(_ id: UInt64) -> IPAddress? {
        headerWatch[id] = nil
        return handshakes.removeValue(forKey: id)?.ip
    }
}

extension ConnectionSlot {
    /// How far a connection is from being handed to its controller, and the transport of the
    /// listener that accepted it (`megaphone_connections{transport}` counts by it). One byte: the
    /// 64-byte slot has no room for a second field.
    struct Opening: Equatable {
        enum Stage: Equatable {
            /// Announced with `megaphone_connect`; bytes flow.
            case established
            /// STARTTLS listener: plaintext stream header and `<starttls/>`, answered by Megaphone;
            /// `headerAnswered` once the features have gone out.
            case startTLS(headerAnswered: Bool)
            /// TLS handshake in progress.
            case handshake
        }

        /// Bits 0–1: the stage (0 established, 1 startTLS, 2 handshake); bit 2: headerAnswered;
        /// bits 3–4: the listener's transport (`Transport.allCases` index).
        private var bits: UInt8

        init(_ stage: Stage, listener: Transport) {
            bits = UInt8(listener.index) << 3
            self.stage = stage
        }

        var stage: Stage {
            get {
                switch bits & 0b11 {
                case 1: .startTLS(headerAnswered: bits & 0b100 != 0)
                case 2: .handshake
                default: .established
                }
            }
            set {
                let code: UInt8 = switch newValue {
                case .established: 0
                case .startTLS(let answered): answered ? 0b101 : 0b001
                case .handshake: 2
                }
                bits = (bits & ~0b111) | code
            }
        }

        /// The transport of the listener that accepted the connection.
        var listener: Transport {
            let index = Int(bits >> 3)
            return index < Transport.allCases.count ? Transport.allCases[index] : .tcp
        }
    }
}

/// The reactor's side of the opening stage: reading the STARTTLS opening, driving the handshake,
/// announcing, and the clocks' sweep.
extension Reactor {
    /// Reads the plaintext opening of a STARTTLS listener's connection and answers it (see
    /// `StartTLSNegotiator`). Ends in a handshake, or a refusal and a close.
    func negotiateStartTLS(_ fd: CInt) {
        readLoop: while true {
            do {
                switch try Socket.read(fd, into: scratch) {
                case .processed(0):
                    closeConnection(fd, reason: .clientClosed, notify: nil)
                    return
                case .processed(let n):
                    if table[fd].inbound == nil { table[fd].inbound = ByteQueue() }
                    table[fd].inbound?.append(UnsafeRawBufferPointer(rebasing: scratch[0..<n]))
                    if (table[fd].inbound?.count ?? 0) > StartTLSNegotiator.maxBytes { break readLoop }
                case .wouldBlock:
                    break readLoop
                }
            } catch {
                closeConnection(fd, reason: .clientError, notify: nil)
                return
            }
        }
        var pending = table[fd].inbound.map { $0.take(max: Swift.max($0.count, 1)) } ?? []
        while true {
            guard case .startTLS(let headerAnswered) = table[fd].opening.stage else { return }
            switch StartTLSNegotiator.next(pending, headerAnswered: headerAnswered) {
            case .needMore:
                table[fd].inbound = pending.isEmpty ? nil : ByteQueue()
                table[fd].inbound?.append(pending)
                return
            case .sendFeatures(let reply, let consumed):
                guard writePlain(fd, reply) else { return }
                table[fd].opening.stage = .startTLS(headerAnswered: true)
                pending.removeFirst(consumed)
            case .proceed(let reply):
                // Whatever the client sent after <starttls/> is dropped: it would be plaintext that
                // ends up inside the TLS session (the STARTTLS injection attack).
                table[fd].inbound = nil
                guard writePlain(fd, reply) else { return }
                guard let context = config?.tls, let session = TLSTransport(context: context, fd: fd) else {
                    closeConnection(fd, reason: .tlsError, notify: nil)
                    return
                }
                table[fd].transport = .tls(session)
                table[fd].opening.stage = .handshake
                driveHandshake(fd)
                return
            case .refuse(let reply, let refusal):
                _ = writePlain(fd, reply)
                logger.debug("Refused a client before STARTTLS", metadata: ["connection.id": "\(table[fd].connID)", "refusal": "\(refusal.rawValue)"])
                closeConnection(fd, reason: refusal == .closed ? .clientClosed : .starttlsRefused, notify: nil)
                return
            }
        }
    }

    /// Writes a short plaintext reply of the STARTTLS opening. It fits an empty socket buffer; a
    /// client that does not take it is closed. Returns false if the connection was closed.
    func writePlain(_ fd: CInt, _ bytes: [UInt8]) -> Bool {
        var written = 0
        let ok = bytes.withUnsafeBytes { all -> Bool in
            while written < all.count {
                guard case .processed(let n)? = try? Socket.write(fd, UnsafeRawBufferPointer(rebasing: all[written...])) else {
                    return false
                }
                written += n
            }
            return true
        }
        if !ok { closeConnection(fd, reason: .clientError, notify: nil) }
        return ok
    }

    /// Advances the TLS handshake; when it is done, the connection is announced to the controller
    /// (`megaphone_connect` with transport `tls`) and bytes start to flow.
    func driveHandshake(_ fd: CInt) {
        guard case .tls(let session) = table[fd].transport, let config else { return }
        let id = table[fd].connID
        switch session.handshake() {
        case .done:
            if let ip = opening.handshakes.removeValue(forKey: id)?.ip { limiter.release(ip) }
            guard let peer = Socket.peerAddress(fd), let local = Socket.localAddress(fd) else {
                closeConnection(fd, reason: .clientError, notify: nil)
                return
            }
            table[fd].opening.stage = .established
            counters.tlsHandshakes.add(1, ordering: .relaxed)
            // OpenSSL may already hold application data that came with the handshake's last flight.
            table[fd].flags.formUnion([.readable, .writable])
            logger.debug("TLS handshake done", metadata: ["connection.id": "\(id)", "peer": "\(peer)"])
            announce(fd, peer: peer, local: local, transport: .tls, now: monotonicMillis(), config: config)
        case .inProgress:
            return
        case .closed:
            closeConnection(fd, reason: .clientClosed, notify: nil)
        case .failed(let why):
            logger.debug("TLS handshake failed", metadata: ["connection.id": "\(id)", "error": "\(why)"])
            closeConnection(fd, reason: .tlsError, notify: nil)
        }
    }

    /// A connection whose header did not come in time: it gets a stream header and a
    /// `connection-timeout` stream error (ejabberd has not answered anything yet: it answers the
    /// client's header), then is closed and its owner told `tcp_closed`.
    func headerTimedOut(_ fd: CInt) {
        let id = table[fd].connID
        logger.debug("No stream header in time", metadata: ["connection.id": "\(id)"])
        let error = StartTLSNegotiator.header(to: nil)
            + "<stream:error><connection-timeout xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>"
            + "</stream:stream>"
        table[fd].flags.remove(.armed)
        write(fd, Array(error.utf8))
        guard table.contains(fd: fd), table[fd].connID == id else { return }
        beginClose(fd, reason: .streamHeaderTimeout, notify: true)
    }


    /// Closes the connections whose handshake or stream header did not come in time.
    func sweepOpenings(now: Int64) {
        for (id, handshake) in opening.handshakes where handshake.deadline <= now {
            if let fd = table.fd(of: id) {
                logger.debug("TLS handshake timed out", metadata: ["connection.id": "\(id)"])
                closeConnection(fd, reason: .handshakeTimeout, notify: nil)
            } else {
                opening.handshakes[id] = nil
                limiter.release(handshake.ip)
            }
        }
        for (id, watch) in opening.headerWatch where watch.deadline <= now {
            guard let fd = table.fd(of: id) else {
                opening.headerWatch[id] = nil
                continue
            }
            // Not asked for data: the wait is on the owner's side, not the client's. Look again later.
            guard table[fd].flags.contains(.armed) else { continue }
            opening.headerWatch[id] = nil
            headerTimedOut(fd)
        }
    }
}
