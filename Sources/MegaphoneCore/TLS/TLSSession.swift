import COpenSSL

/// What a non-blocking OpenSSL call did: `.done(n)`, `.wantRead`/`.wantWrite` (call again when the
/// socket is readable/writable), `.closed` (the peer's close_notify), `.failed(reason)`.
enum TLSResult: Equatable {
    case done(Int)
    case wantRead
    case wantWrite
    case closed
    case failed(String)
}

/// The calls on one connection's `SSL *`, non-blocking. The reactor that owns the connection is the
/// only caller; each call clears the thread's error queue first, as OpenSSL requires before
/// `SSL_get_error`.
enum TLSSession {
    static func handshake(_ ssl: OpaquePointer) -> TLSResult {
        ERR_clear_error()
        let rc = SSL_do_handshake(ssl)
        return rc == 1 ? .done(0) : result(ssl, rc)
    }

    static func read(_ ssl: OpaquePointer, into buffer: UnsafeMutableRawBufferPointer) -> TLSResult {
        ERR_clear_error()
        let rc = SSL_read(ssl, buffer.baseAddress, CInt(clamping: buffer.count))
        return rc > 0 ? .done(Int(rc)) : result(ssl, rc)
    }

    static func write(_ ssl: OpaquePointer, _ bytes: UnsafeRawBufferPointer) -> TLSResult {
        ERR_clear_error()
        let rc = SSL_write(ssl, bytes.baseAddress, CInt(clamping: bytes.count))
        return rc > 0 ? .done(Int(rc)) : result(ssl, rc)
    }

    /// Sends close_notify if it can without blocking, then frees the session. The fd stays open.
    /// Decrypted bytes OpenSSL holds that no `read` has taken yet.
    static func pending(_ ssl: OpaquePointer) -> Int {
        Int(SSL_pending(ssl))
    }

    static func close(_ ssl: OpaquePointer) {
        ERR_clear_error()
        if SSL_is_init_finished(ssl) == 1 { _ = SSL_shutdown(ssl) }
        SSL_free(ssl)
    }

    private static func result(_ ssl: OpaquePointer, _ rc: CInt) -> TLSResult {
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
