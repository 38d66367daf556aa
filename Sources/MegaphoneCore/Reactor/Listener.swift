#if canImport(Glibc)
import Glibc
#endif

/// A listening socket shared by every reactor (each registers it with EPOLLEXCLUSIVE, so one wakes
/// per incoming connection). The fd closes when the last reference goes: a reactor that still holds
/// the listener can never accept on a closed, reused fd number.
public final class Listener: Sendable {
    public let fd: CInt
    /// What `start` asked for (port 0 = any).
    public let requested: ListenerSpec
    /// What is bound (the real port).
    public let bound: ListenerSpec

    /// Accepted connections wait in the kernel queue up to this many (DESIGN.md: backlog 4096).
    public static let backlog: CInt = 4096

    /// Binds and listens. The new listener owns its fd.
    public init(_ spec: ListenerSpec) throws(SystemError) {
        fd = try Socket.listen(on: SocketAddress(ip: spec.ip, port: spec.port), backlog: Self.backlog)
        requested = spec
        let port = Socket.localAddress(fd)?.port ?? spec.port
        bound = ListenerSpec(transport: spec.transport, ip: spec.ip, port: port)
    }

    deinit { closeFD(fd) }
}
