/// How a connection ends when the client shuts its side first (EPOLLRDHUP): a half-close.
///
/// What the client sent before its FIN is delivered like any input (on get_data, at most `max_chunk`
/// at a time, only while the distribution queue has room); the owner hears `{tcp_closed, ConnId}`
/// right after the last chunk, or at once when nothing is left (armed or not). Our side stays open:
/// what the owner sends next still reaches the client, as on ejabberd's own listener, where a client
/// that sends `</stream:stream>` and shuts down its side reads the server's `</stream:stream>`. The
/// connection ends on the owner's `close` (flushing first) or, if none comes, `flushTimeoutMillis`
/// after `tcp_closed`; either way it counts as `client_closed` and the owner hears nothing more.
extension Reactor {
    /// A half-closed connection with nothing left in `inbound`: tells the owner `tcp_closed` if the
    /// kernel holds nothing more either. Otherwise the rest waits for get_data.
    func finishIfDrained(_ fd: CInt) {
        let flags = table[fd].flags
        guard flags.contains(.peerClosed), flags.isDisjoint(with: [.eofNotified, .closing]),
              table[fd].inbound?.isEmpty ?? true else { return }
        // Decrypted bytes OpenSSL holds, or unread bytes in the kernel (for TLS maybe only the
        // close_notify alert): a read on the next get_data finds them, and the EOF after them.
        if table[fd].transport.holdsInput { return }
        do {
            guard case .processed(0) = try Socket.peek(fd) else { return }
            clientFinished(fd)
        } catch {
            let id = table[fd].connID
            closeConnection(fd, reason: .clientError, notify: .error(connID: id, reason: error.erlangName))
        }
    }

    /// The client's EOF has been reached: everything it sent is delivered. Tells the owner (else the
    /// controller) `tcp_closed` and starts the wait for its `close`.
    func clientFinished(_ fd: CInt) {
        let id = table[fd].connID
        table[fd].flags.insert(.eofNotified)
        table[fd].flags.remove([.armed, .readable])
        // No stream header will come now; the owner ends the stream.
        opening.headerWatch[id] = nil
        emit(to: recipient(of: table[fd]), .closed(connID: id))
        // Without `.closing`: output still flows. A `close` replaces this with a flush deadline.
        if closing[id] == nil {
            let wait = config?.flushTimeoutMillis ?? 5_000
            closing[id] = Closing(deadline: monotonicMillis() + wait, reason: .clientClosed, notify: false)
        }
    }
}
