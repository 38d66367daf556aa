/// Client to owner: `get_data`, `put_data`, and reading a connection for its owner, with the flow
/// control that keeps a fast client from growing our memory.
///
/// A connection is read only while it is armed (a get_data is outstanding) and only while the
/// distribution queue (`ByteBudget`) has room; otherwise its bytes stay in the kernel, whose TCP window
/// pushes back on the client. Readiness is remembered in the slot's flags (`readable`), since epoll is
/// edge-triggered. Armed connections left unread while the queue was full wait in `starved` for
/// `.resumeReads`. The bytes read go through the transport (`SocketTransport`) and on to the framing
/// stage (`deliver`).
extension Reactor {
    func getData(owner: PidRef, connID: UInt64) {
        guard let fd = establishedFD(of: connID) else {
            emit(to: owner, .requestError(tag: .connID(connID), reason: .unknownConnection))
            return
        }
        guard !table[fd].flags.contains(.closing) else { return }
        if !announced.isEmpty { announced[connID] = nil }
        claim(fd, by: owner)
        if case .parsed(let input) = table[fd].framing, let config {
            // The session's first get_data (xmpp_socket activates the socket once, at accept)
            // opens the window; `credit` keeps it open.
            input.credit = Swift.max(input.credit, Int32(config.window))
        }
        table[fd].flags.insert(.armed)
        serve(fd)
    }

    func putData(replyTo: PidRef?, connID: UInt64, bytes: [UInt8]) {
        guard let fd = establishedFD(of: connID), let config else {
            if let replyTo { emit(to: replyTo, .requestError(tag: .connID(connID), reason: .unknownConnection)) }
            return
        }
        let pending = table[fd].inbound?.count ?? 0
        guard bytes.count <= config.inputBufferLimit - pending else {
            if let replyTo { emit(to: replyTo, .requestError(tag: .connID(connID), reason: .inputBufferFull)) }
            return
        }
        guard !bytes.isEmpty else { return }
        if table[fd].inbound == nil { table[fd].inbound = ByteQueue() }
        table[fd].inbound?.append(bytes)
        if table[fd].flags.contains(.armed) { serve(fd) }
    }

    /// The distribution queue has drained, or a node that was behind caught up: serves the armed
    /// connections held back (those still held back go back to `starved`).
    func resumeReads() {
        let ids = starved
        starved.removeAll(keepingCapacity: true)
        for id in ids {
            guard let fd = establishedFD(of: id), table[fd].flags.contains(.armed) else { continue }
            serve(fd)
        }
    }

    /// Delivers one chunk to the owner of an armed connection, from pending input first, else from
    /// the socket. Disarms once a chunk is sent.
    func serve(_ fd: CInt) {
        if case .parsed(let input) = table[fd].framing {
            serveParsed(fd, input)
            return
        }
        guard let config else { return }
        let id = table[fd].connID
        if let inbound = table[fd].inbound, !inbound.isEmpty {
            let chunk = inbound.take(max: config.maxChunk)
            if inbound.isEmpty { table[fd].inbound = nil }
            deliver(fd, chunk)
            if table[fd].inbound == nil && table[fd].flags.contains(.peerClosed) { finishIfDrained(fd) }
            return
        }
        // Everything the client sent has been delivered, and the owner told.
        guard !table[fd].flags.contains(.eofNotified) else { return }
        guard table[fd].flags.contains(.readable) else { return }
        guard toErlang.mayRead(), !backlog.isBehind(table[fd].owner.node) else {
            starved.insert(id)
            return
        }
        let (bytes, end) = readChunk(fd, limit: config.maxChunk)
        if !bytes.isEmpty { deliver(fd, Array(bytes)) }
        // The client has sent everything: tcp_closed follows the last chunk at once. Our side stays
        // open for what the owner sends back.
        switch end {
        case .eof:
            clientFinished(fd)
        case .failed(let reason, let event):
            closeConnection(fd, reason: reason, notify: event)
        case .open:
            // A chunk that filled up just before the EOF: tcp_closed follows it all the same.
            if table[fd].flags.contains(.peerClosed) { finishIfDrained(fd) }
        }
    }

    /// How a read left the connection.
    enum ChunkEnd {
        case open
        /// The client's EOF (after the bytes read).
        case eof
        /// A read or TLS error: close with this reason, telling the owner this event.
        case failed(CloseReason, Event)
    }

    /// Reads at most `limit` bytes of a client into `scratch` through its transport: counts them,
    /// and keeps `readable` as the read left it. The bytes are valid until the next read.
    func readChunk(_ fd: CInt, limit: Int) -> (bytes: UnsafeRawBufferPointer, end: ChunkEnd) {
        let buffer = UnsafeMutableRawBufferPointer(rebasing: scratch[0..<limit])
        let (filled, end) = table[fd].transport.fill(fd, buffer, peerClosed: table[fd].flags.contains(.peerClosed))
        if filled > 0 { counters.bytesIn.add(filled, ordering: .relaxed) }
        let bytes = UnsafeRawBufferPointer(rebasing: buffer[0..<filled])
        switch end {
        case .open(let readable):
            if !readable { table[fd].flags.remove(.readable) }
            return (bytes, .open)
        case .eof:
            return (bytes, .eof)
        case .failed(let reason, let closeReason, let detail):
            let id = table[fd].connID
            if let detail {
                logger.debug("TLS read failed", metadata: ["connection.id": "\(id)", "error": "\(detail)"])
            }
            return (bytes, .failed(closeReason, .error(connID: id, reason: reason)))
        }
    }
}

/// Reading a parsed connection: as long as its owner has credit, parse what is pending and then
/// what the socket has, a few chunks per turn (`again` brings it back next turn), so one fast client
/// cannot hold the loop. Unparsed bytes wait in `inbound`.
extension Reactor {
    static let chunksPerTurn = 4

    func serveParsed(_ fd: CInt, _ input: ParsedInput) {
        guard let config else { return }
        let id = table[fd].connID
        var reads = 0
        while input.credit > 0 && !input.parser.hasFailed && !table[fd].flags.contains(.closing) {
            if let inbound = table[fd].inbound, !inbound.isEmpty {
                inbound.withFront { parse(fd, input, $0) }
                if inbound.isEmpty {
                    table[fd].inbound = nil
                    if table[fd].flags.contains(.peerClosed) { finishIfDrained(fd) }
                }
                continue
            }
            guard !table[fd].flags.contains(.eofNotified), table[fd].flags.contains(.readable) else { return }
            guard toErlang.mayRead(), !backlog.isBehind(table[fd].owner.node) else {
                starved.insert(id)
                return
            }
            guard reads < Self.chunksPerTurn else {
                again.append(id)
                return
            }
            var limit = config.maxChunk
            if input.shaper.isLimited {
                let now = monotonicMillis()
                let allowed = input.shaper.allowance(now: now)
                guard allowed > 0 else {
                    paced[id] = input.shaper.resumeAt(now: now)
                    return
                }
                limit = Swift.min(limit, allowed)
            }
            reads += 1
            let (bytes, end) = readChunk(fd, limit: limit)
            if !bytes.isEmpty {
                markActive(fd)
                input.shaper.spend(bytes.count)
                let used = parse(fd, input, bytes)
                if used < bytes.count && !input.parser.hasFailed {
                    let rest = ByteQueue()
                    rest.append(UnsafeRawBufferPointer(rebasing: bytes[used...]))
                    table[fd].inbound = rest
                }
            }
            switch end {
            case .open:
                break
            case .eof:
                // What the client sent before its EOF is parsed first; tcp_closed follows it.
                if table[fd].inbound == nil { clientFinished(fd) } else { table[fd].flags.insert(.peerClosed) }
                return
            case .failed(let reason, let event):
                closeConnection(fd, reason: reason, notify: event)
                return
            }
            if table[fd].flags.contains(.peerClosed) && table[fd].inbound == nil { finishIfDrained(fd) }
        }
    }

    /// Serves the parsed connections that stopped last turn with input left.
    func serveAgain() {
        let ids = again
        again.removeAll(keepingCapacity: true)
        for id in ids {
            guard let fd = establishedFD(of: id), case .parsed = table[fd].framing else { continue }
            serve(fd)
        }
    }
}
