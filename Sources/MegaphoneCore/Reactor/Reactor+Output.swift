/// Owner to client: `send_data` and `close` requests, writing through the transport, the send queue
/// and its limit.
///
/// What the socket does not take at once waits in the slot's `outbound` queue (allocated only then)
/// and is flushed on EPOLLOUT, or, with TLS, on readability too (`SocketTransport.writeMayWaitForRead`).
/// The `send_data` of one command batch are coalesced per connection, so a session's stanzas that came
/// in one distribution read leave in one write() (for TLS, one record).
extension Reactor {
    /// The most `send_data` bytes held for one connection within a command batch.
    static let coalesceLimit = 64 * 1024

    /// `send_data`: held to the end of the batch. Past `coalesceLimit` what is held goes first, so a
    /// flood meets the send queue limit (and its cheap drop) at once.
    func sendData(connID id: UInt64, bytes: [UInt8]) {
        guard let fd = establishedFD(of: id) else {
            counters.unknownConnection.add(1, ordering: .relaxed)
            return
        }
        guard !table[fd].flags.contains(.closing) else { return }
        markActive(fd)
        if let held = coalesced[id]?.count, held + bytes.count <= Self.coalesceLimit {
            coalesced[id]?.append(contentsOf: bytes)
        } else {
            sendCoalesced(id)
            coalesced[id] = bytes
            coalescedOrder.append(id)
        }
    }

    /// `close`: what is held and queued is flushed first (`beginClose`).
    func close(connID id: UInt64) {
        sendCoalesced(id)
        guard let fd = establishedFD(of: id) else {
            counters.unknownConnection.add(1, ordering: .relaxed)
            return
        }
        // Already closing (send queue full, header timeout): that close stands.
        guard !table[fd].flags.contains(.closing) else { return }
        beginClose(fd, reason: .requested, notify: false)
    }

    /// `send_data` held by `handleCommands` for one connection, written now.
    func sendCoalesced(_ id: UInt64) {
        guard let bytes = coalesced.removeValue(forKey: id) else { return }
        guard let fd = establishedFD(of: id) else {
            counters.unknownConnection.add(1, ordering: .relaxed)
            return
        }
        guard !table[fd].flags.contains(.closing) else { return }
        write(fd, bytes)
    }

    func sendAllCoalesced() {
        for id in coalescedOrder { sendCoalesced(id) }
        coalescedOrder.removeAll(keepingCapacity: true)
    }

    /// Writes what the socket takes now and queues the rest. Past `send_queue_limit` the connection is
    /// closed and its owner told `send_queue_full`.
    func write(_ fd: CInt, _ bytes: [UInt8]) {
        guard let config, !bytes.isEmpty else { return }
        let id = table[fd].connID
        var written = 0
        if table[fd].outbound == nil && table[fd].flags.contains(.writable) {
            var failure: (String, CloseReason)? = nil
            bytes.withUnsafeBytes { all in
                while written < all.count {
                    switch table[fd].transport.write(fd, UnsafeRawBufferPointer(rebasing: all[written...])) {
                    case .wrote(let n): written += n
                    case .wouldBlock: return
                    case .failed(let reason, let closeReason):
                        failure = (reason, closeReason)
                        return
                    }
                }
            }
            counters.bytesOut.add(written, ordering: .relaxed)
            if let (reason, closeReason) = failure {
                closeConnection(fd, reason: closeReason, notify: .error(connID: id, reason: reason))
                return
            }
            if written < bytes.count { table[fd].flags.remove(.writable) }
        }
        guard written < bytes.count else { return }
        let queue = table[fd].outbound ?? ByteQueue()
        table[fd].outbound = queue
        guard queue.count + (bytes.count - written) <= config.sendQueueLimit else {
            overflow(fd, queue: queue)
            return
        }
        queue.append(written == 0 ? bytes : Array(bytes[written...]))
    }

    /// The client does not take its output fast enough: the send queue would pass `send_queue_limit`.
    /// The data that does not fit is dropped, an XMPP stream error is queued after what is already
    /// there, the owner is told `send_queue_full` at once (so that the session ends and stops sending),
    /// and the connection closes once the queue drains or after `flushTimeoutMillis`, whichever comes
    /// first. Memory stays at `send_queue_limit` plus the error. The queue holds whole `send_data`
    /// payloads (ejabberd sends whole elements), so the error follows a complete element.
    func overflow(_ fd: CInt, queue: ByteQueue) {
        let id = table[fd].connID
        logger.debug("Send queue full", metadata: ["connection.id": "\(id)", "queued": "\(queue.count)"])
        queue.append(Array(Self.sendQueueFullError.utf8))
        emit(to: recipient(of: table[fd]), .error(connID: id, reason: "send_queue_full"))
        beginClose(fd, reason: .sendQueueFull, notify: false)
    }

    /// What a client whose send queue overflowed reads last (RFC 6120 §4.9.3.15).
    static let sendQueueFullError =
        "<stream:error><policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
        + "<text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>Too much unread data</text></stream:error>"
        + "</stream:stream>"

    /// Writes queued output after EPOLLOUT. Returns false if the connection was closed.
    func flush(_ fd: CInt) -> Bool {
        let id = table[fd].connID
        if let queue = table[fd].outbound {
            var failure: (String, CloseReason)? = nil
            var blocked = false
            while !queue.isEmpty && !blocked && failure == nil {
                queue.withFront { front in
                    switch table[fd].transport.write(fd, front) {
                    case .wrote(let n):
                        counters.bytesOut.add(n, ordering: .relaxed)
                        return n
                    case .wouldBlock:
                        blocked = true
                        return 0
                    case .failed(let reason, let closeReason):
                        failure = (reason, closeReason)
                        return 0
                    }
                }
            }
            if let (reason, closeReason) = failure {
                closeConnection(fd, reason: closeReason, notify: .error(connID: id, reason: reason))
                return false
            }
            if blocked {
                table[fd].flags.remove(.writable)
                return true
            }
            table[fd].outbound = nil
        }
        if table[fd].flags.contains(.closing), let state = closing[id] {
            closeConnection(fd, reason: state.reason, notify: state.notify ? .closed(connID: id) : nil)
            return false
        }
        return true
    }
}
