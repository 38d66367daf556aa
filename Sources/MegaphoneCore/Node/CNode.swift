import CEI
import CLinux
import Logging

#if canImport(Glibc)
import Glibc
#endif

/// The identity of this C node and its two server sockets: the distribution listener and the epmd
/// registration. Erlang nodes that have the cookie connect to it by name (`megaphone@HOST`).
///
/// Used by the distribution thread only, after `init`.
public final class CNode {
    var ec = ei_cnode()
    public let nodeName: String
    public let listenFD: CInt
    public let port: Int
    /// Open for the node's lifetime: epmd unregisters the name when it closes.
    private var epmdFD: CInt

    /// The address the distribution port listens on (0.0.0.0: every interface).
    public let interface: IPAddress

    /// Initialises ei, opens the distribution port on `interface` (IPv4) and registers `alive@host` with
    /// epmd, starting `epmd -daemon` first when none answers (as `erl` does).
    public init(alive: String, host: String, cookie: String, distPort: Int, interface: IPAddress = .loopbackIPv4,
                logger: Logger) throws(NodeError) {
        // ei_init must come first; ignoring SIGPIPE keeps a write to a peer that already left from
        // killing the process silently (seen in the prototype).
        guard ei_init() == 0 else { throw .initFailed(erlErrno: CEI_erl_errno()) }
        signal(SIGPIPE, SIG_IGN)

        nodeName = "\(alive)@\(host)"
        self.interface = interface
        // A creation that differs on every start, so that pids of an earlier run are not taken for ours.
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        let creation = UInt32(truncatingIfNeeded: Int(ts.tv_sec) &* 1000 &+ Int(ts.tv_nsec) / 1_000_000) | 4
        let rc = ei_connect_xinit_ussi(&ec, host, alive, nodeName, nil, cookie, creation,
                                       CEI_socket_callbacks(), CEI_socket_callbacks_size(), nil)
        guard rc >= 0 else { throw .initFailed(erlErrno: CEI_erl_errno()) }

        // Loopback unless told otherwise, as operators expect from Erlang's inet_dist_use_interface: epmd
        // advertises the port to anyone who asks, and an unauthenticated peer costs a handshake.
        var address = in_addr()
        withUnsafeMutableBytes(of: &address) { $0.copyBytes(from: interface.bytes.prefix(4)) }
        var boundPort = CInt(distPort)
        // The backlog holds connections between two turns of the distribution loop, which accepts them all.
        let fd = ei_xlisten(&ec, &address, &boundPort, 128)
        guard fd >= 0 else {
            let e = CEI_erl_errno()
            throw e == EADDRINUSE ? .distPortInUse(port: distPort) : .listenFailed(erlErrno: e)
        }
        listenFD = fd
        port = Int(boundPort)
        epmdFD = -1
        do throws(NodeError) {
            epmdFD = try Self.publish(&ec, port: port, name: nodeName, logger: logger)
        } catch {
            _ = ei_close_connection(fd)
            throw error
        }
    }

    /// Warns when the host part of the node name resolves to no address the distribution port listens
    /// on: Erlang nodes look the port up in epmd and connect to the host's address, so they could not
    /// reach this node (a Debian host often resolves its own name to 127.0.1.1, not 127.0.0.1).
    public func warnIfUnreachable(host: String, logger: Logger) {
        guard interface != .anyIPv4 else { return }
        let resolved = Self.ipv4Addresses(of: host)
        guard !resolved.isEmpty, !resolved.contains(interface) else { return }
        logger.warning("The node's host name resolves to an address the distribution port does not listen on; Erlang nodes cannot connect. Use --dist-interface",
                       metadata: ["host": "\(host)", "host.addresses": "\(resolved.map(\.description))",
                                  "dist.interface": "\(interface)"])
    }

    /// The IPv4 addresses `host` resolves to (empty when it does not).
    static func ipv4Addresses(of host: String) -> [IPAddress] {
        var hints = addrinfo()
        hints.ai_family = AF_INET
        hints.ai_socktype = CInt(CLinux_SOCK_STREAM)
        var list: UnsafeMutablePointer<addrinfo>? = nil
        guard getaddrinfo(host, nil, &hints, &list) == 0 else { return [] }
        defer { freeaddrinfo(list) }
        var addresses: [IPAddress] = []
        var entry = list
        while let current = entry {
            if let sa = current.pointee.ai_addr, current.pointee.ai_family == AF_INET {
                let sin = UnsafeRawPointer(sa).loadUnaligned(as: sockaddr_in.self)
                let bytes = withUnsafeBytes(of: sin.sin_addr) { Array($0) }
                if let ip = IPAddress(bytes: bytes), !addresses.contains(ip) { addresses.append(ip) }
            }
            entry = current.pointee.ai_next
        }
        return addresses
    }

    deinit {
        if epmdFD >= 0 { closeFD(epmdFD) }
        _ = ei_close_connection(listenFD)
    }

    /// Takes the name out of epmd (the node is going away).
    public func unpublish() {
        if epmdFD >= 0 {
            closeFD(epmdFD)
            epmdFD = -1
        }
    }

    /// The C node's own pid, for `megaphone_connect`.
    public var selfPid: erlang_pid {
        withUnsafeMutablePointer(to: &ec) { ei_self($0).pointee }
    }

    private static func publish(_ ec: inout ei_cnode, port: Int, name: String, logger: Logger) throws(NodeError) -> CInt {
        let epmdPort = getenv("ERL_EPMD_PORT").flatMap { Int(String(cString: $0)) } ?? 4369
        var started = false
        let deadline = monotonicMillis() + 10_000
        while true {
            let fd = ei_publish(&ec, CInt(port))
            if fd >= 0 { return fd }
            let e = CEI_erl_errno()
            if epmdAnswers(port: epmdPort) {
                // epmd is there but refused the ALIVE2 request: another node has the name.
                throw e == EIO ? .nameInUse(name: name) : .publishFailed(erlErrno: e)
            }
            if !started {
                logger.info("No epmd answers; starting epmd -daemon", metadata: ["epmd.port": "\(epmdPort)"])
                guard spawnEPMD() else { throw .epmdUnreachable(port: epmdPort) }
                started = true
            }
            guard monotonicMillis() < deadline else { throw .epmdUnreachable(port: epmdPort) }
            usleep(100_000)
        }
    }

    /// Whether something accepts TCP connections on the epmd port of the loopback interface.
    private static func epmdAnswers(port: Int) -> Bool {
        let fd = socket(AF_INET, CInt(SOCK_STREAM.rawValue) | CInt(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { closeFD(fd) }
        let address = SocketAddress(ip: .loopbackIPv4, port: UInt16(clamping: port))
        return address.withSockaddr { connect(fd, $0, $1) } == 0
    }

    /// Runs `epmd -daemon` from PATH and waits for it (it forks and returns at once).
    private static func spawnEPMD() -> Bool {
        var pid = pid_t()
        let argv: [UnsafeMutablePointer<CChar>?] = [strdup("epmd"), strdup("-daemon"), nil]
        defer { argv.forEach { free($0) } }
        guard posix_spawnp(&pid, "epmd", nil, nil, argv, environ) == 0 else { return false }
        var status: CInt = 0
        _ = waitpid(pid, &status, 0)
        return true
    }
}
