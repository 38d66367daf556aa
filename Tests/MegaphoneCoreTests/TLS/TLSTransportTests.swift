import COpenSSL
import Testing

@testable import MegaphoneCore

#if canImport(Glibc)
import Glibc
#endif

/// `TLSTransport` over a socketpair, against an OpenSSL client in the same thread: both sides are
/// non-blocking, so each step runs until it wants the other side's bytes, as on a reactor.
struct TLSTransportTests {
    /// A context with a throwaway self-signed certificate, made with the openssl tool; its files are
    /// removed once loaded.
    static func makeContext() throws -> TLSContext {
        let dir = "/tmp/megaphone-tls-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try #require(mkdir(dir, 0o700) == 0)
        let key = "\(dir)/key.pem", cert = "\(dir)/cert.pem"
        let args = ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-subj", "/CN=localhost", "-days", "1", "-keyout", key, "-out", cert]
        var pid: pid_t = 0
        var cArgs = args.map { strdup($0) } + [nil]
        defer { for a in cArgs { free(a) } }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
        defer { posix_spawn_file_actions_destroy(&actions) }
        try #require(posix_spawnp(&pid, "openssl", &actions, nil, &cArgs, environ) == 0)
        var status: CInt = 0
        waitpid(pid, &status, 0)
        try #require(status == 0)
        // One file, chain then key, as `certfile` takes it.
        let pem = "\(dir)/both.pem"
        let out = fopen(pem, "w")
        for part in [cert, key] {
            let f = fopen(part, "r")
            var buffer = [UInt8](repeating: 0, count: 4096)
            while true {
                let n = fread(&buffer, 1, buffer.count, f)
                if n == 0 { break }
                fwrite(buffer, 1, n, out)
            }
            fclose(f)
        }
        fclose(out)
        defer {
            for file in [key, cert, pem] { unlink(file) }
            rmdir(dir)
        }
        return try TLSContext(TLSOptions(certfile: pem))
    }

    @Test func handshakeThenBytesBothWays() throws {
        let context = try Self.makeContext()
        let pair = try SocketPair()
        let server = try #require(TLSTransport(context: context, fd: pair.server))
        let transport = SocketTransport.tls(server)
        defer { transport.close() }
        let clientContext = try #require(SSL_CTX_new(TLS_client_method()))
        defer { SSL_CTX_free(clientContext) }
        let client = try #require(SSL_new(clientContext))
        defer { SSL_free(client) }
        SSL_set_fd(client, pair.client)
        SSL_set_connect_state(client)

        var serverDone = false
        var clientDone = false
        for _ in 0..<100 where !(serverDone && clientDone) {
            if !clientDone { clientDone = SSL_do_handshake(client) == 1 }
            if !serverDone {
                switch server.handshake() {
                case .done: serverDone = true
                case .inProgress: break
                case let other: Issue.record("handshake: \(other)"); return
                }
            }
        }
        #expect(serverDone && clientDone)
        #expect(transport.writeMayWaitForRead)

        // Two records from the client fill one chunk.
        for text in ["<stream:stream>", "<presence/>"] {
            #expect(SSL_write(client, text, CInt(text.utf8.count)) == CInt(text.utf8.count))
        }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 4096, alignment: 1)
        defer { buffer.deallocate() }
        let (filled, end) = transport.fill(pair.server, buffer, peerClosed: false)
        #expect(String(decoding: buffer[0..<filled], as: UTF8.self) == "<stream:stream><presence/>")
        guard case .open(readable: false) = end else { Issue.record("expected an empty socket, got \(end)"); return }
        #expect(!transport.holdsInput)

        let reply = Array("<stream:features/>".utf8)
        guard case .wrote(reply.count) = reply.withUnsafeBytes({ transport.write(pair.server, $0) }) else {
            Issue.record("server write did not go through")
            return
        }
        var received = [UInt8](repeating: 0, count: 64)
        let n = SSL_read(client, &received, CInt(received.count))
        #expect(n == CInt(reply.count))
        #expect(Array(received.prefix(Int(max(n, 0)))) == reply)

        // close_notify from the client reads as the EOF.
        _ = SSL_shutdown(client)
        let (_, last) = transport.fill(pair.server, buffer, peerClosed: false)
        guard case .eof = last else { Issue.record("expected .eof, got \(last)"); return }
    }

    @Test func aClientThatIsNotTLSFailsTheHandshake() throws {
        let context = try Self.makeContext()
        let pair = try SocketPair()
        let server = try #require(TLSTransport(context: context, fd: pair.server))
        defer { server.close() }
        send(pair.client, "<?xml version='1.0'?><stream:stream to='localhost'>")
        guard case .failed = server.handshake() else { Issue.record("a plaintext client passed the handshake"); return }
    }
}
