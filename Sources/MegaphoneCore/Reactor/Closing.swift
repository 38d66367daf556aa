/// The closing stage: a connection's way out, whoever starts it.
///
/// `beginClose` lets queued output drain for at most `flushTimeoutMillis` (the reason and whether the
/// owner is told wait in `closing`); `closeConnection` takes the connection out of the table, gives
/// back what the other stages held for it (handshake slot, header and announce clocks, address
/// handle, TLS session), counts the reason, tells the owner (else the controller) if there is
/// anything to tell, and hands the socket to `retire` (`Reactor+Lingering.swift`). The client's own
/// half-close is `Reactor+HalfClose.swift`; the unclaimed-connection deadline
/// `Reactor+AnnounceDeadline.swift`.
struct Closing {
    var deadline: Int64
    var reason: CloseReason
    var notify: Bool
}

/// The reactor's side of the closing stage.
extension Reactor {
    /// Closes now if nothing is queued; otherwise stops reading and lets the queue drain, for at most
    /// `flushTimeoutMillis`.
    func beginClose(_ fd: CInt, reason: CloseReason, notify: Bool) {
        let id = table[fd].connID
        guard let queue = table[fd].outbound, !queue.isEmpty else {
            closeConnection(fd, reason: reason, notify: notify ? .closed(connID: id) : nil)
            return
        }
        table[fd].flags.insert(.closing)
        table[fd].flags.remove(.armed)
        let timeout = config?.flushTimeoutMillis ?? 5_000
        closing[id] = Closing(deadline: monotonicMillis() + timeout, reason: reason, notify: notify)
    }

    func closeConnection(_ fd: CInt, reason: CloseReason, notify event: Event?) {
        guard let slot = table.remove(fd: fd) else { return }
        var reason = reason
        var event = event
        // A client that half-closed ended its connection, whoever closes the rest of it; its owner
        // has heard `tcp_closed` already and hears nothing more.
        if slot.flags.contains(.eofNotified) {
            event = nil
            if [.requested, .flushTimeout, .shutdown, .nodeDown].contains(reason) { reason = .clientClosed }
        }
        // A limit's close that ends early (the client hangs up or resets while its stream error is
        // flushed) still counts as that limit, and tells the owner nothing more than it was told.
        if let state = closing.removeValue(forKey: slot.connID),
           state.reason == .sendQueueFull || state.reason == .streamHeaderTimeout {
            reason = state.reason
            if !state.notify { event = nil }
        }
        if let ip = opening.forget(slot.connID) { limiter.release(ip) }
        if !announced.isEmpty { announced[slot.connID] = nil }
        if !unclaimed.isEmpty { unclaimed.remove(slot.connID) }
        if slot.opening.stage == .established && !slot.owner.isNone { sessions.removed(node: slot.owner.node) }
        addresses.release(slot.address, now: monotonicMillis(), rate: config?.connectionRate)
        slot.transport.close()
        // Counted before the close, so that a client that sees the close also finds it in stats.
        counters.connections.subtract(1, ordering: .relaxed)
        counters.closed(via: slot.opening.listener)
        load.subtract(1, ordering: .relaxed)
        counters.closed(reason)
        retire(fd, reason: reason)
        logger.debug("Closed connection", metadata: ["connection.id": "\(slot.connID)", "reason": "\(reason.name)"])
        // Nobody has heard of a connection before its megaphone_connect: nobody to tell.
        if let event, slot.opening.stage == .established { emit(to: recipient(of: slot), event) }
    }

    /// Closes the connections whose flush (or wait for a half-closed client's owner) ran out of time.
    func sweepClosing(now: Int64) {
        for (id, state) in closing where state.deadline <= now {
            if let fd = table.fd(of: id) {
                // A close that was itself a refusal keeps its reason; a requested one ran out of time.
                let reason: CloseReason = state.reason == .requested || state.reason == .shutdown ? .flushTimeout : state.reason
                closeConnection(fd, reason: reason, notify: state.notify ? .closed(connID: id) : nil)
            }
            closing[id] = nil
        }
    }
}
