/// What one read from a client did, whatever the transport.
enum TransportRead {
    case data(Int)
    case eof
    case wouldBlock
    /// `reason` is what the owner is told (`tcp_error`), `detail` what the debug log says.
    case failed(reason: String, CloseReason, detail: String? = nil)
}

/// What one write to a client did, whatever the transport.
enum TransportWrite {
    case wrote(Int)
    case wouldBlock
    case failed(reason: String, CloseReason)
}

/// The transport stage of a connection: how its bytes cross the socket, as they are (`plain`) or
/// through OpenSSL (`tls`, see `TLSTransport`). Stage one after accepting; the opening
/// (`ConnectionSlot.Opening`) decides when a `tls` one is made.
///
/// A value in the connection's slot, switched on rather than called through a protocol, so that the
/// hot path stays statically dispatched and an idle connection holds one pointer at most.
enum SocketTransport {
    case plain
    case tls(TLSTransport)

    var isTLS: Bool {
        if case .tls = self { return true }
        return false
    }

    /// One read from the client.
    func read(_ fd: CInt, into buffer: UnsafeMutableRawBufferPointer) -> TransportRead {
        switch self {
        case .tls(let session):
            return session.read(into: buffer)
        case .plain:
            do {
                switch try Socket.read(fd, into: buffer) {
                case .processed(0): return .eof
                case .processed(let n): return .data(n)
                case .wouldBlock: return .wouldBlock
                }
            } catch {
                return .failed(reason: error.erlangName, .clientError)
            }
        }
    }

    /// One write to the client.
    func write(_ fd: CInt, _ bytes: UnsafeRawBufferPointer) -> TransportWrite {
        switch self {
        case .tls(let session):
            return session.write(bytes)
        case .plain:
            do {
                switch try Socket.write(fd, bytes) {
                case .processed(let n): return .wrote(n)
                case .wouldBlock: return .wouldBlock
                }
            } catch {
                return .failed(reason: error.erlangName, .clientError)
            }
        }
    }

    /// "A blocked write waits for a read": OpenSSL may need the peer's bytes before it can go on
    /// writing, so with TLS queued output is retried on readability too, not only on EPOLLOUT.
    var writeMayWaitForRead: Bool { isTLS }

    /// Whether bytes the client sent are held above the kernel (decrypted, not yet read).
    var holdsInput: Bool {
        if case .tls(let session) = self { return session.pending > 0 }
        return false
    }

    /// How a `fill` ended.
    enum FillEnd {
        /// Room or data may be left; `readable` says whether the socket may still hold bytes.
        case open(readable: Bool)
        /// The client's EOF was read.
        case eof
        case failed(reason: String, CloseReason, detail: String?)
    }

    /// Reads into `buffer` until it is full, the socket is empty, the EOF or an error.
    ///
    /// One read() returns all the socket holds, but SSL_read returns one TLS record: the chunk is
    /// filled from as many records as are there, so that a TLS client's bytes reach ejabberd in
    /// chunks as large as a plain client's (bench/run-tls saw ~285-byte chunks, 4x the plain count).
    /// A half-closed (`peerClosed`) client's socket stays readable until its EOF is read: it is read
    /// on, so that tcp_closed follows the last chunk at once.
    func fill(_ fd: CInt, _ buffer: UnsafeMutableRawBufferPointer, peerClosed: Bool) -> (filled: Int, end: FillEnd) {
        var filled = 0
        while filled < buffer.count {
            switch read(fd, into: UnsafeMutableRawBufferPointer(rebasing: buffer[filled...])) {
            case .data(let n):
                filled += n
                if isTLS || peerClosed { continue }
                // A short read emptied the socket. Edge-triggered epoll reports every later arrival,
                // so the next get_data waits for EPOLLIN instead of spending a read() on EAGAIN.
                return (filled, .open(readable: filled == buffer.count))
            case .wouldBlock:
                return (filled, .open(readable: false))
            case .eof:
                return (filled, .eof)
            case .failed(let reason, let closeReason, let detail):
                return (filled, .failed(reason: reason, closeReason, detail: detail))
            }
        }
        return (filled, .open(readable: true))
    }

    /// Frees what the transport holds (the TLS session; close_notify if it can). The fd stays open.
    func close() {
        if case .tls(let session) = self { session.close() }
    }
}
