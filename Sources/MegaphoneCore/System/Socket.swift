import CLinux

#if canImport(Glibc)
import Glibc
#endif

/// An IPv4 or IPv6 address as its network-order bytes (4 or 16 of them).
public struct IPAddress: Hashable, Sendable, CustomStringConvertible {
    public let bytes: [UInt8]

    public init?(bytes: [UInt8]) {
        guard bytes.count == 4 || bytes.count == 16 else { return nil }
        self.bytes = bytes
    }

    public static let anyIPv4 = IPAddress(unchecked: [0, 0, 0, 0])
    public static let loopbackIPv4 = IPAddress(unchecked: [127, 0, 0, 1])

    init(unchecked bytes: [UInt8]) { self.bytes = bytes }

    public var isIPv4: Bool { bytes.count == 4 }

    /// The eight 16-bit groups of an IPv6 address, as Erlang's `inet:ip6_address()` holds them.
    public var ipv6Groups: [UInt16] {
        stride(from: 0, to: bytes.count, by: 2).map { UInt16(bytes[$0]) << 8 | UInt16(bytes[$0 + 1]) }
    }

    public var description: String {
        isIPv4 ? bytes.map(String.init).joined(separator: ".")
            : ipv6Groups.map { String($0, radix: 16) }.joined(separator: ":")
    }
}

/// An address and port, as accept/getsockname report them.
public struct SocketAddress: Hashable, Sendable, CustomStringConvertible {
    public let ip: IPAddress
    public let port: UInt16

    public init(ip: IPAddress, port: UInt16) {
        self.ip = ip
        self.port = port
    }

    public var description: String { ip.isIPv4 ? "\(ip):\(port)" : "[\(ip)]:\(port)" }

    init?(storage: sockaddr_storage) {
        var storage = storage
        switch Int32(storage.ss_family) {
        case AF_INET:
            let (addr, port) = withUnsafeBytes(of: &storage) { raw in
                let sin = raw.load(as: sockaddr_in.self)
                return (withUnsafeBytes(of: sin.sin_addr) { Array($0) }, UInt16(bigEndian: sin.sin_port))
            }
            self.init(ip: IPAddress(unchecked: addr), port: port)
        case AF_INET6:
            let (addr, port) = withUnsafeBytes(of: &storage) { raw in
                let sin6 = raw.load(as: sockaddr_in6.self)
                return (withUnsafeBytes(of: sin6.sin6_addr) { Array($0) }, UInt16(bigEndian: sin6.sin6_port))
            }
            self.init(ip: IPAddress(unchecked: addr), port: port)
        default:
            return nil
        }
    }

    /// Calls `body` with this address as a `sockaddr` of the right family and length.
    package func withSockaddr<R>(_ body: (UnsafePointer<sockaddr>, socklen_t) -> R) -> R {
        if ip.isIPv4 {
            var sin = sockaddr_in()
            sin.sin_family = sa_family_t(AF_INET)
            sin.sin_port = port.bigEndian
            withUnsafeMutableBytes(of: &sin.sin_addr) { $0.copyBytes(from: ip.bytes) }
            return withUnsafePointer(to: &sin) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
        }
        var sin6 = sockaddr_in6()
        sin6.sin6_family = sa_family_t(AF_INET6)
        sin6.sin6_port = port.bigEndian
        withUnsafeMutableBytes(of: &sin6.sin6_addr) { $0.copyBytes(from: ip.bytes) }
        return withUnsafePointer(to: &sin6) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_in6>.size)) }
        }
    }
}

/// Socket calls on raw fds. The reactor owns the fds; these functions never close one they did not open.
/// `package`, like `syscall`: megaphone-load's loop uses them too.
package enum Socket {
    /// Opens a non-blocking listening socket bound to `address` (port 0 picks a free port).
    package static func listen(on address: SocketAddress, backlog: CInt) throws(SystemError) -> CInt {
        let family = address.ip.isIPv4 ? AF_INET : AF_INET6
        let fd = try syscallBlocking("socket") {
            Glibc.socket(family, CInt(CLinux_SOCK_STREAM) | CInt(CLinux_SOCK_NONBLOCK) | CInt(CLinux_SOCK_CLOEXEC), 0)
        }
        do throws(SystemError) {
            try setOption(fd, SOL_SOCKET, SO_REUSEADDR, 1)
            _ = try syscallBlocking("bind") { address.withSockaddr { Glibc.bind(fd, $0, $1) } }
            _ = try syscallBlocking("listen") { Glibc.listen(fd, backlog) }
        } catch {
            closeFD(fd)
            throw error
        }
        return fd
    }

    /// Accepts one connection as a non-blocking, close-on-exec fd.
    package static func accept(_ listenFD: CInt) throws(SystemError) -> IOResult<CInt> {
        try syscall("accept4") {
            CLinux_accept4(listenFD, CInt(CLinux_SOCK_NONBLOCK) | CInt(CLinux_SOCK_CLOEXEC))
        }
    }

    package static func setOption(_ fd: CInt, _ level: CInt, _ name: CInt, _ value: CInt) throws(SystemError) {
        var value = value
        _ = try syscallBlocking("setsockopt") {
            Glibc.setsockopt(fd, level, name, &value, socklen_t(MemoryLayout<CInt>.size))
        }
    }

    package static func peerAddress(_ fd: CInt) -> SocketAddress? {
        address(fd) { Glibc.getpeername($0, $1, $2) }
    }

    package static func localAddress(_ fd: CInt) -> SocketAddress? {
        address(fd) { Glibc.getsockname($0, $1, $2) }
    }

    private static func address(
        _ fd: CInt, _ call: (CInt, UnsafeMutablePointer<sockaddr>, UnsafeMutablePointer<socklen_t>) -> CInt
    ) -> SocketAddress? {
        var storage = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let rc = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { call(fd, $0, &len) }
        }
        return rc == 0 ? SocketAddress(storage: storage) : nil
    }

    package static func read(_ fd: CInt, into buffer: UnsafeMutableRawBufferPointer) throws(SystemError) -> IOResult<Int> {
        try syscall("read") { Glibc.read(fd, buffer.baseAddress, buffer.count) }
    }

    package static func write(_ fd: CInt, _ bytes: UnsafeRawBufferPointer) throws(SystemError) -> IOResult<Int> {
        try syscall("send") { Glibc.send(fd, bytes.baseAddress, bytes.count, CInt(MSG_NOSIGNAL)) }
    }

    /// Looks at the receive queue without taking anything: `.processed(0)` when the client has shut
    /// its side and everything it sent has been read (EOF), `.processed(1)` when bytes are unread,
    /// `.wouldBlock` when the client may still send. What FIONREAD tells, plus whether the FIN came.
    package static func peek(_ fd: CInt) throws(SystemError) -> IOResult<Int> {
        var byte: UInt8 = 0
        return try syscall("recv") { Glibc.recv(fd, &byte, 1, CInt(MSG_PEEK) | CInt(MSG_DONTWAIT)) }
    }

    /// Sends FIN and keeps the read side open (`shutdown(SHUT_WR)`), for a lingering close.
    package static func shutdownWrite(_ fd: CInt) throws(SystemError) {
        _ = try syscallBlocking("shutdown") { Glibc.shutdown(fd, CInt(SHUT_WR)) }
    }

    /// The pending error of a socket that epoll reported with EPOLLERR.
    package static func pendingError(_ fd: CInt) -> CInt {
        var err: CInt = 0
        var len = socklen_t(MemoryLayout<CInt>.size)
        _ = Glibc.getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len)
        return err
    }
}
