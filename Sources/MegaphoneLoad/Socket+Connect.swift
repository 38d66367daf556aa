import CLinux
import MegaphoneCore

#if canImport(Glibc)
import Glibc
#endif

/// The client half of `Socket`: what megaphone-load needs and the node does not.
extension Socket {
    /// A non-blocking, close-on-exec TCP socket for `family`'s addresses, with Nagle off (a login is
    /// a conversation of small writes) and, given `source`, bound to that address with port 0.
    ///
    /// `IP_BIND_ADDRESS_NO_PORT` first: binding to an address normally picks a port right away,
    /// searching the port table for one free on that address; with ~19,000 sockets per address that
    /// search made the clients' system time set the login rate (bench/megaphone_bench_load.erl).
    /// With the option, `connect()` picks the port, free for the whole 4-tuple. (Set for IPv4
    /// sources, the case the benches use: a loopback address per process.)
    static func openClient(to server: SocketAddress, from source: IPAddress?) throws(SystemError) -> CInt {
        let family = server.ip.isIPv4 ? AF_INET : AF_INET6
        let fd = try syscallBlocking("socket") {
            Glibc.socket(family, CInt(CLinux_SOCK_STREAM) | CInt(CLinux_SOCK_NONBLOCK) | CInt(CLinux_SOCK_CLOEXEC), 0)
        }
        do throws(SystemError) {
            try setOption(fd, CInt(IPPROTO_TCP), TCP_NODELAY, 1)
            if let source {
                if source.isIPv4 { try setOption(fd, CInt(IPPROTO_IP), IP_BIND_ADDRESS_NO_PORT, 1) }
                let local = SocketAddress(ip: source, port: 0)
                _ = try syscallBlocking("bind") { local.withSockaddr { Glibc.bind(fd, $0, $1) } }
            }
        } catch {
            closeFD(fd)
            throw error
        }
        return fd
    }

    /// Starts a non-blocking connect: true when it completed at once, false when it is under way
    /// (`EINPROGRESS`: epoll reports the socket writable when it is done, `pendingError` says how).
    static func connect(_ fd: CInt, to server: SocketAddress) throws(SystemError) -> Bool {
        do {
            let result = try syscall("connect") { server.withSockaddr { Glibc.connect(fd, $0, $1) } }
            if case .processed = result { return true }
            return false
        } catch where error.errno == EINPROGRESS {
            return false
        }
    }

    /// Makes `close()` reset the connection (RST) instead of a FIN and TIME_WAIT: a million sessions
    /// ended at once would otherwise hold a million 4-tuples for a minute on this side.
    static func setResetOnClose(_ fd: CInt) {
        var option = linger(l_onoff: 1, l_linger: 0)
        _ = Glibc.setsockopt(fd, SOL_SOCKET, SO_LINGER, &option, socklen_t(MemoryLayout<linger>.size))
    }
}
