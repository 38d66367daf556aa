#if canImport(Glibc)
import Glibc
#endif

extension SocketAddress {
    /// `HOST:PORT` as a command line gives it: an IPv4 address (`127.0.0.1:9464`), an IPv6 address in
    /// brackets (`[::1]:9464`), or `localhost` (127.0.0.1); a port 0...65535. No name lookup: an
    /// address to listen on is given as an address. Nil for anything else.
    public init?(hostPort text: String) {
        guard let colon = text.lastIndex(of: ":") else { return nil }
        var host = String(text[..<colon])
        let portText = text[text.index(after: colon)...]
        guard !portText.isEmpty, portText.allSatisfy({ $0 >= "0" && $0 <= "9" }), portText.count <= 5,
              let port = Int(portText), (0...65_535).contains(port) else { return nil }
        let ip: IPAddress?
        if host.hasPrefix("[") && host.hasSuffix("]") && host.count > 2 {
            host = String(host.dropFirst().dropLast())
            var address = in6_addr()
            ip = inet_pton(AF_INET6, host, &address) == 1
                ? IPAddress(bytes: withUnsafeBytes(of: &address) { Array($0) }) : nil
        } else if host == "localhost" {
            ip = .loopbackIPv4
        } else {
            var address = in_addr()
            ip = inet_pton(AF_INET, host, &address) == 1
                ? IPAddress(bytes: withUnsafeBytes(of: &address) { Array($0) }) : nil
        }
        guard let ip else { return nil }
        self.init(ip: ip, port: UInt16(port))
    }
}
