@testable import MegaphoneCore

#if canImport(Glibc)
import Glibc
#endif

/// A loopback listener that plays ejabberd's part, one scripted connection at a time. Every wait
/// has a deadline (poll), so a client that does not do its part fails the test instead of hanging it.
final class FakeXMPPServer {
    let fd: CInt
    let address: SocketAddress

    /// `receiveBuffer`: SO_RCVBUF of the accepted connections (they inherit the listener's), so
    /// that a server that does not read makes the client's writes block soon.
    init(receiveBuffer: CInt? = nil) throws {
        fd = try Socket.listen(on: SocketAddress(ip: .loopbackIPv4, port: 0), backlog: 128)
        if let receiveBuffer { try Socket.setOption(fd, SOL_SOCKET, SO_RCVBUF, receiveBuffer) }
        guard let bound = Socket.localAddress(fd) else { throw FakeServerError.noAddress }
        address = bound
    }

    deinit { closeFD(fd) }

    /// The next connection, waiting at most `millis`.
    func accept(within millis: Int32 = 5_000) -> Peer? {
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&p, 1, millis) == 1, case .processed(let client)? = try? Socket.accept(fd) else { return nil }
        return Peer(fd: client)
    }

    /// Accepts a connection and logs it in as ejabberd 23.01 would; the peer knows its user index.
    func acceptLoggedIn(within millis: Int32 = 5_000) throws -> Peer {
        guard let peer = accept(within: millis) else { throw FakeServerError.noConnection }
        try peer.login()
        return peer
    }
}

enum FakeServerError: Error {
    case noAddress, noConnection, timeout(String), badAuth(String)
}

/// One accepted connection (non-blocking, waited on with poll).
final class Peer {
    let fd: CInt
    private var input: [UInt8] = []
    /// The user index its SASL PLAIN named.
    private(set) var user = -1
    var jid: String { "xb\(user)@localhost/r" }

    init(fd: CInt) { self.fd = fd }
    deinit { closeFD(fd) }

    static let header = "<?xml version='1.0'?><stream:stream id='1234' xml:lang='en' "
        + "xmlns:stream='http://etherx.jabber.org/streams' version='1.0' from='localhost' xmlns='jabber:client'>"

    /// The server's half of the login, checking what the client sends at each step.
    func login() throws {
        _ = try read(until: "version='1.0'>")
        send(Self.header + "<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>"
            + "<mechanism>PLAIN</mechanism></mechanisms></stream:features>")
        let auth = try read(until: "</auth>")
        // <auth xmlns='...' mechanism='PLAIN'>BASE64</auth>
        guard auth.contains("mechanism='PLAIN'>"), auth.hasSuffix("</auth>"),
              let payload = auth.dropLast("</auth>".count).split(separator: ">").last,
              let plain = decodeBase64(String(payload)) else { throw FakeServerError.badAuth(auth) }
        let parts = plain.split(separator: 0, omittingEmptySubsequences: false).map { String(decoding: $0, as: UTF8.self) }
        guard parts.count == 3, parts[1].hasPrefix("xb"), let index = Int(parts[1].dropFirst(2)),
              parts[2] == "pw\(index)" else { throw FakeServerError.badAuth(auth) }
        user = index
        send("<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>")
        _ = try read(until: "version='1.0'>")
        send(Self.header + "<stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></stream:features>")
        let bind = try read(until: "</iq>")
        guard bind.contains("<resource>r</resource>") else { throw FakeServerError.badAuth(bind) }
        send("<iq xmlns='jabber:client' type='result' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
            + "<jid>\(jid)</jid></bind></iq>")
        _ = try read(until: "<presence/>")
        send("<presence xmlns='jabber:client' xml:lang='en' from='\(jid)' to='\(jid)'/>")
    }

    /// What the client sent up to and including `marker` (taken from the input).
    func read(until marker: String, within millis: Int64 = 5_000) throws -> String {
        let m = Array(marker.utf8)
        let deadline = monotonicMillis() + millis
        while true {
            if let r = range(of: m) {
                let text = String(decoding: input[..<r], as: UTF8.self)
                input.removeFirst(r)
                return text
            }
            let left = deadline - monotonicMillis()
            guard left > 0, fill(within: left) else {
                throw FakeServerError.timeout("\(marker) not in ...\(String(decoding: input.suffix(200), as: UTF8.self))")
            }
        }
    }

    /// Whether the client closed the connection (EOF or reset) within `millis`, reading what comes.
    func closedByClient(within millis: Int64 = 5_000) -> Bool {
        let deadline = monotonicMillis() + millis
        while true {
            let left = deadline - monotonicMillis()
            guard left > 0 else { return false }
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&p, 1, Int32(left)) == 1 else { return false }
            var buffer = [UInt8](repeating: 0, count: 4096)
            let n = Glibc.read(fd, &buffer, buffer.count)
            if n <= 0 { return n == 0 || errno != EAGAIN }
            input += buffer[0..<n]
        }
    }

    var unread: String { String(decoding: input, as: UTF8.self) }

    func send(_ text: String) {
        let bytes = Array(text.utf8)
        var sent = 0
        while sent < bytes.count {
            let n = bytes[sent...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n > 0 {
                sent += n
            } else if n < 0 && errno == EAGAIN {
                var p = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
                guard poll(&p, 1, 5_000) == 1 else { return }
            } else {
                return
            }
        }
    }

    /// One read of whatever is there, waiting at most `millis`; false on timeout or EOF.
    private func fill(within millis: Int64) -> Bool {
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&p, 1, Int32(millis)) == 1 else { return false }
        var buffer = [UInt8](repeating: 0, count: 65536)
        let n = Glibc.read(fd, &buffer, buffer.count)
        guard n > 0 else { return false }
        input += buffer[0..<n]
        return true
    }

    /// End index of the first occurrence of `marker` in the input.
    private func range(of marker: [UInt8]) -> Int? {
        guard !marker.isEmpty, input.count >= marker.count else { return nil }
        for i in 0...(input.count - marker.count) where input[i] == marker[0] {
            if input[i..<(i + marker.count)].elementsEqual(marker) { return i + marker.count }
        }
        return nil
    }
}

/// Standard base64 back to bytes (the fake server reads SASL PLAIN with it).
func decodeBase64(_ text: String) -> [UInt8]? {
    let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)
    var bits: UInt32 = 0
    var count = 0
    var out: [UInt8] = []
    for c in text.utf8 where c != UInt8(ascii: "=") {
        guard let v = alphabet.firstIndex(of: c) else { return nil }
        bits = bits << 6 | UInt32(v)
        count += 6
        if count >= 8 {
            count -= 8
            out.append(UInt8(truncatingIfNeeded: bits >> UInt32(count)))
        }
    }
    return out
}
