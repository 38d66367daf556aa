import COpenSSL

/// Why a TLS context could not be built (bad certificate file, unknown ciphers, ...).
public struct TLSError: Error, CustomStringConvertible, Equatable, Sendable {
    public let description: String

    init(_ what: String) {
        var buffer = [CChar](repeating: 0, count: 256)
        COpenSSL_last_error(&buffer, buffer.count)
        let detail = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        description = detail.isEmpty ? what : "\(what): \(detail)"
    }
}

/// The TLS settings `start` gives.
public struct TLSOptions: Equatable, Sendable {
    /// One PEM file with the certificate chain (leaf first) and the private key, as ejabberd's
    /// `certfiles` hold them.
    public var certfile: String
    /// OpenSSL cipher list for TLS 1.2 (TLS 1.3 suites are OpenSSL's defaults).
    public var ciphers: String
    public var minVersionTLS13: Bool

    public static let defaultCiphers = "HIGH:!aNULL:!eNULL:!MD5:!3DES:!RC4:!CAMELLIA:!ARIA:!SHA1"

    public init(certfile: String, ciphers: String = Self.defaultCiphers, minVersionTLS13: Bool = false) {
        self.certfile = certfile
        self.ciphers = ciphers
        self.minVersionTLS13 = minVersionTLS13
    }
}

/// A server-side OpenSSL context: certificate, key, versions, ciphers, ALPN. Immutable once built;
/// OpenSSL allows `SSL_new` on one context from several threads, so reactors share it. A reload
/// builds a new context; connections made from the old one keep it alive through OpenSSL's own
/// reference count.
public final class TLSContext: @unchecked Sendable {
    let ctx: OpaquePointer
    public let options: TLSOptions

    public init(_ options: TLSOptions) throws(TLSError) {
        ERR_clear_error()
        guard let ctx = SSL_CTX_new(TLS_server_method()) else { throw TLSError("SSL_CTX_new failed") }
        self.ctx = ctx
        self.options = options
        COpenSSL_configure_server(ctx)
        guard COpenSSL_set_min_version(ctx, options.minVersionTLS13 ? 1 : 0) == 1 else {
            throw TLSError("cannot set the minimum TLS version")
        }
        guard SSL_CTX_set_cipher_list(ctx, options.ciphers) == 1 else {
            throw TLSError("no usable cipher in \"\(options.ciphers)\"")
        }
        guard SSL_CTX_use_certificate_chain_file(ctx, options.certfile) == 1 else {
            throw TLSError("cannot load the certificate chain from \(options.certfile)")
        }
        guard SSL_CTX_use_PrivateKey_file(ctx, options.certfile, SSL_FILETYPE_PEM) == 1 else {
            throw TLSError("cannot load the private key from \(options.certfile)")
        }
        guard SSL_CTX_check_private_key(ctx) == 1 else {
            throw TLSError("the private key in \(options.certfile) does not match its certificate")
        }
        COpenSSL_enable_xmpp_alpn(ctx)
    }

    deinit { SSL_CTX_free(ctx) }

    /// A new server-side TLS session on `fd` (the caller keeps owning the fd), or nil when OpenSSL is
    /// out of memory.
    func makeSession(fd: CInt) -> OpaquePointer? {
        guard let ssl = SSL_new(ctx) else { return nil }
        guard SSL_set_fd(ssl, fd) == 1 else {
            SSL_free(ssl)
            return nil
        }
        SSL_set_accept_state(ssl)
        return ssl
    }
}
