import COpenSSL

/// The TLS transport of one connection: its `SSL *`, driven without blocking on the reactor thread
/// that owns the connection (OpenSSL's WANT_READ/WANT_WRITE machine).
///
/// A value in the connection's slot (`SocketTransport.tls`), one pointer wide: an idle TLS
/// connection costs the slot and what OpenSSL holds, which `SSL_MODE_RELEASE_BUFFERS` keeps small
/// (DESIGN.md). The owning reactor is the only caller; `close()` frees the session and must be the
/// last call. Each call clears the thread's error queue first, as OpenSSL requires before
/// `SSL_get_error`.
///
/// Order: `handshake()` until `.done`, then `read`/`write` in any order. A `.wouldBlock` from either
/// may mean OpenSSL waits for the *other* direction (a write that needs the peer's bytes first, a
/// read that must send); the reactor therefore retries queued output when the socket turns readable
/// (`SocketTransport.writeMayWaitForRead`), and readiness is re-checked on every epoll event.
struct TLSTransport {
    let ssl: OpaquePointer

    /// A server-side session on `fd` (the caller keeps owning the fd), or nil when OpenSSL is out of
    /// memory.
    init?(context: TLSContext, fd: CInt) {
        guard let ssl = context.makeSession(fd: fd) else { return nil }
        self.ssl = ssl
    }

    /// What one step of the handshake did.
    enum HandshakeStep: Equatable {
        case done
        /// Call again on the next event of the socket.
        case inProgress
        /// The client went away.
        case closed
        case failed(String)
    }

    func handshake() -> HandshakeStep {
        ERR_clear_error()
        let rc = SSL_do_handshake(ssl)
        guard rc != 1 else { return .done }
        switch result(rc) {
        case .wantRead, .wantWrite: return .inProgress
        case .closed: return .closed
        case .failed(let why): return .failed(why)
        }
    }

    /// One `SSL_read`: at most one TLS record's worth of plaintext.
    func read(into buffer: UnsafeMutableRawBufferPointer) -> TransportRead {
        ERR_clear_error()
        let rc = SSL_read(ssl, buffer.baseAddress, CInt(clamping: buffer.count))
        guard rc <= 0 else { return .data(Int(rc)) }
        switch result(rc) {
        case .wantRead, .wantWrite: return .wouldBlock
        case .closed: return .eof
        case .failed(let why): return .failed(reason: "tls_error", .tlsError, detail: why)
        }
    }

    /// One `SSL_write`. OpenSSL wants the same bytes again after a `.wouldBlock`: callers keep them
    /// queued in front (`ByteQueue.withFront`) and retry from there.
    func write(_ bytes: UnsafeRawBufferPointer) -> TransportWrite {
        ERR_clear_error()
        let rc = SSL_write(ssl, bytes.baseAddress, CInt(clamping: bytes.count))
        guard rc <= 0 else { return .wrote(Int(rc)) }
        switch result(rc) {
        case .wantRead, .wantWrite: return .wouldBlock
        case .closed: return .failed(reason: "closed", .clientClosed)
        case .failed: return .failed(reason: "tls_error", .tlsError)
        }
    }

    /// Decrypted bytes OpenSSL holds that no `read` has taken yet.
    var pending: Int { Int(SSL_pending(ssl)) }

    /// Sends close_notify if it can without blocking, then frees the session. The fd stays open.
    func close() {
        ERR_clear_error()
        if SSL_is_init_finished(ssl) == 1 { _ = SSL_shutdown(ssl) }
        SSL_free(ssl)
    }

    private enum Failure {
        case wantRead, wantWrite, closed
        case failed(String)
    }

    private func result(_ rc: CInt) -> Failure {
        switch SSL_get_error(ssl, rc) {
        case SSL_ERROR_WANT_READ: return .wantRead
        case SSL_ERROR_WANT_WRITE: return .wantWrite
        case SSL_ERROR_ZERO_RETURN: return .closed
        case SSL_ERROR_SYSCALL:
            // An EOF without close_notify, or a socket error: the client is gone either way.
            return .closed
        default:
            var buffer = [CChar](repeating: 0, count: 256)
            COpenSSL_last_error(&buffer, buffer.count)
            return .failed(String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
        }
    }
}
