#if canImport(Glibc)
import Glibc
#endif

/// Client sockets a reactor has finished with but not closed yet: a lingering close, as Apache does it.
///
/// Closing a socket whose receive queue holds unread bytes, or that receives bytes afterwards, makes
/// the kernel answer with a reset; the client's kernel then throws away what the client had not read
/// yet, typically the stream error written just before the close (a STARTTLS refusal, a stream
/// header timeout, `send_queue_full`, or ejabberd's `policy-violation` to a client still sending). So
/// a socket that is done instead gets `shutdown(SHUT_WR)` (the client sees our FIN after the last
/// byte), is read and its bytes thrown away until the client closes too, `maxBytes` were discarded
/// or `millis` passed, and only then closed.
///
/// A lingering socket is no longer a connection: it has left the connection table, the counters and
/// the per-address limits, its owner has been told what it will be told, and shutdown of the node
/// does not wait for it (`closeAll`). It costs one entry here and its kernel socket, nothing else.
/// Owned by one reactor thread.
struct LingeringSockets {
    /// How long a client may take to close its side after ours.
    static let millis: Int64 = 2_000
    /// How much a client may still send after ours before it is cut off.
    static let maxBytes = 1 << 20

    private struct Entry {
        var deadline: Int64
        var left: Int
    }

    private var entries: [CInt: Entry] = [:]

    var isEmpty: Bool { entries.isEmpty }
    var count: Int { entries.count }

    func contains(fd: CInt) -> Bool { entries[fd] != nil }

    /// Takes over `fd`, an established client socket already out of the connection table. Closes it
    /// at once if the client has closed and nothing is unread, or if the socket failed; otherwise shuts
    /// our side, watches it in `epfd` under `data` (the caller's epoll user data) and discards what is
    /// there now.
    mutating func begin(_ fd: CInt, epfd: CInt, data: UInt64, now: Int64, scratch: UnsafeMutableRawBufferPointer) {
        switch try? Socket.peek(fd) {
        case .wouldBlock?, .processed(1...)?:
            break
        default:
            closeFD(fd)
            return
        }
        do {
            try Socket.shutdownWrite(fd)
            try Epoll.modify(epfd: epfd, fd: fd, events: Epoll.in | Epoll.rdhup | Epoll.edgeTriggered, data: data)
        } catch {
            closeFD(fd)
            return
        }
        entries[fd] = Entry(deadline: now + Self.millis, left: Self.maxBytes)
        drain(fd, scratch: scratch)
    }

    /// Reads and discards what `fd` holds (after epoll reported it); closes it at EOF, on an error or
    /// past `maxBytes`.
    mutating func drain(_ fd: CInt, scratch: UnsafeMutableRawBufferPointer) {
        guard var entry = entries[fd] else { return }
        while true {
            switch try? Socket.read(fd, into: scratch) {
            case .processed(let n)? where n > 0:
                entry.left -= n
                guard entry.left > 0 else {
                    close(fd)
                    return
                }
            case .wouldBlock?:
                entries[fd] = entry
                return
            default:
                close(fd)
                return
            }
        }
    }

    /// Closes the sockets whose time is up.
    mutating func sweep(now: Int64) {
        for (fd, entry) in entries where entry.deadline <= now { close(fd) }
    }

    /// Closes every lingering socket now (the reactor is stopping).
    mutating func closeAll() {
        for fd in entries.keys { closeFD(fd) }
        entries.removeAll()
    }

    private mutating func close(_ fd: CInt) {
        entries[fd] = nil
        // close() also takes the fd out of the epoll set: it was never dup'ed.
        closeFD(fd)
    }
}
