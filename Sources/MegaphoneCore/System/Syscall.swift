#if canImport(Glibc)
import Glibc
#endif

/// A failed system call: the call's name and the errno it left.
public struct SystemError: Error, CustomStringConvertible, Sendable, Equatable {
    public let errno: CInt
    public let call: String

    public init(errno: CInt, call: String) {
        self.errno = errno
        self.call = call
    }

    /// The errno as Erlang spells it (`econnreset`), for `tcp_error` reasons and replies.
    public var erlangName: String { ErrnoName.erlang(errno) }

    public var description: String {
        "\(call) failed: \(String(cString: strerror(errno))) (\(erlangName))"
    }
}

/// The result of a non-blocking call: done, or the kernel would have blocked.
public enum IOResult<T: Sendable>: Sendable {
    case processed(T)
    case wouldBlock
}

/// Runs `body` and turns a `-1` result into `SystemError`, retrying `EINTR` and mapping `EAGAIN` to
/// `.wouldBlock`. `errno` is read here and nowhere else in the Swift code (`package`, so that
/// megaphone-load reads it here too).
///
/// `@inline(never)` so that nothing (ARC traffic included) runs between the call and the read of errno.
@inline(never)
package func syscall<T: FixedWidthInteger & Sendable>(
    _ call: StaticString, _ body: () -> T
) throws(SystemError) -> IOResult<T> {
    while true {
        let result = body()
        if result != -1 { return .processed(result) }
        let err = Glibc.errno
        switch err {
        case EINTR: continue
        case EAGAIN: return .wouldBlock
        default: throw SystemError(errno: err, call: "\(call)")
        }
    }
}

/// Like `syscall(_:_:)` for calls on blocking or non-socket fds, where `EAGAIN` is itself an error.
@inline(never)
package func syscallBlocking<T: FixedWidthInteger & Sendable>(
    _ call: StaticString, _ body: () -> T
) throws(SystemError) -> T {
    while true {
        let result = body()
        if result != -1 { return result }
        let err = Glibc.errno
        if err == EINTR { continue }
        throw SystemError(errno: err, call: "\(call)")
    }
}

/// Closes an fd. On Linux the fd is gone even when close() reports EINTR, so EINTR is success: retrying
/// could close an fd another thread just got (https://lwn.net/Articles/576478/).
package func closeFD(_ fd: CInt) {
    _ = Glibc.close(fd)
}

/// Erlang's names for the errnos a socket can report (`inet:format_error/1` uses the same).
public enum ErrnoName {
    public static func erlang(_ errno: CInt) -> String {
        switch errno {
        case ECONNRESET: return "econnreset"
        case ECONNREFUSED: return "econnrefused"
        case ECONNABORTED: return "econnaborted"
        case EPIPE: return "epipe"
        case ETIMEDOUT: return "etimedout"
        case EHOSTUNREACH: return "ehostunreach"
        case ENETUNREACH: return "enetunreach"
        case EADDRINUSE: return "eaddrinuse"
        case EADDRNOTAVAIL: return "eaddrnotavail"
        case EACCES: return "eacces"
        case EMFILE: return "emfile"
        case ENFILE: return "enfile"
        case ENOBUFS: return "enobufs"
        case ENOMEM: return "enomem"
        case EINVAL: return "einval"
        case EBADF: return "ebadf"
        case ENOTCONN: return "enotconn"
        case EAFNOSUPPORT: return "eafnosupport"
        case EIO: return "eio"
        case ENOENT: return "enoent"
        default: return "errno_\(errno)"
        }
    }
}
