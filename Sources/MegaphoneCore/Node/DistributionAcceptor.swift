import CEI
import CLinux
import Logging

#if canImport(Glibc)
import Glibc
#endif

/// Takes connections on the distribution port without ever making the distribution thread wait for a
/// peer.
///
/// Erlang handshakes each incoming connection in a process of its own with a timer (net_setuptime), so
/// one slow peer never blocks the others. Here the distribution thread accepts (the listening socket is
/// non-blocking, `accept4` after `poll`) and hands each connection to a short-lived handshake thread
/// that runs ei's handshake (`CEI_accept_handshake`) with a deadline and posts the outcome to `results`,
/// whose eventfd the distribution thread polls. At most `maxInFlight` handshakes run at once; a
/// connection past that is closed at once and counted (`dist_handshakes_refused`).
///
/// Before, the distribution thread ran `ei_accept_tmo` itself: a silent TCP connection to the port held
/// every peer and every client for its 5 s timeout, a slow-drip one for as long as it dripped.
///
/// What this relies on in ei (erl_interface 5.3, OTP 25, `src/connect/ei_connect.c`), checked in the
/// source: `ei_accept_tmo` only reads the `ei_cnode` (node name, cookie, creation, callbacks) and copies
/// it into ei's per-fd socket table; that table is lock-free per fd slot in Debian's `libei.a` (it
/// defines `socket_info_data`, the segmented table published with atomics, not the mutex-guarded
/// `ei_sockets` array whose lookups return pointers that a concurrent insert may move); the challenge
/// (`gen_challenge`: gettimeofday, uname, clock, getpid, gethostid, MD5 over a stack struct) and digest
/// use only locals; `erl_errno` is per thread with `_REENTRANT`. The one writer to an `ei_cnode` is
/// `ei_make_pid` (`pidsn`); to share nothing with the distribution thread anyway, each handshake gets a
/// private copy of the node's `ei_cnode`. All socket I/O goes through our callbacks (sockets.c), whose
/// fd table is guarded by a mutex and whose waits end at the handshake's deadline.
///
/// Used by the distribution thread only; `results` is filled by the handshake threads.
final class DistributionAcceptor {
    /// What a handshake thread reports.
    enum Outcome: Sendable {
        /// The peer is authenticated; `fd` is an established ei connection, now the caller's.
        case connected(fd: CInt, name: String)
        /// The handshake failed (the fd is closed): `erlErrno` is `ETIMEDOUT` for a peer too slow.
        case failed(erlErrno: CInt)
    }

    /// Erlang's default net_setuptime: the time a peer has to complete its handshake.
    static let handshakeTimeoutMillis: UInt32 = 7_000
    /// Handshakes that may run at once. A legitimate peer needs one; this many silent connections held
    /// for the whole deadline still leave room for it.
    static let maxInFlight = 32
    /// Connections taken per turn of the distribution loop, so that a flood of connects cannot keep
    /// the loop from its peers.
    private static let acceptsPerTurn = 16

    private let node: CNode
    private let counters: Counters
    private let logger: Logger
    let results: Mailbox<Outcome>
    private var inFlight = 0
    /// Set when `maxInFlight` was reached, so that a burst logs one warning.
    private var full = false
    /// After EMFILE or ENFILE the listening socket is not polled until then (no spinning on it).
    private var pausedUntil: Int64 = 0

    init(node: CNode, counters: Counters, logger: Logger) throws(SystemError) {
        self.node = node
        self.counters = counters
        self.logger = logger
        results = try Mailbox<Outcome>()
    }

    /// Whether the listening socket should be polled now.
    var isAccepting: Bool { pausedUntil == 0 || monotonicMillis() >= pausedUntil }

    /// Accepts what is waiting on the listening socket (poll said it is readable) and starts a
    /// handshake for each connection, or closes it when `maxInFlight` are running.
    func acceptReady() {
        for _ in 0..<Self.acceptsPerTurn {
            let fd: CInt
            do {
                switch try syscall("accept4", { CLinux_accept4(node.listenFD, CInt(CLinux_SOCK_CLOEXEC)) }) {
                case .processed(let accepted): fd = accepted
                case .wouldBlock: return
                }
            } catch {
                switch error.errno {
                case ECONNABORTED, EPROTO, EPERM:
                    continue
                default:
                    // EMFILE, ENFILE, ENOBUFS, ENOMEM: the connection stays in the backlog; try again later.
                    pausedUntil = monotonicMillis() + 100
                    logger.warning("Cannot accept on the distribution port; pausing",
                                   metadata: ["error": "\(error)"])
                    return
                }
            }
            pausedUntil = 0
            guard inFlight < Self.maxInFlight else {
                closeFD(fd)
                counters.distHandshakesRefused.add(1, ordering: .relaxed)
                if !full {
                    full = true
                    logger.warning("Too many distribution handshakes at once: closing new connections",
                                   metadata: ["handshakes.max": "\(Self.maxInFlight)"])
                }
                continue
            }
            start(fd: fd)
        }
    }

    /// The handshakes that ended since the last call.
    func takeResults() -> [Outcome] {
        let outcomes = results.takeAll()
        inFlight -= outcomes.count
        if inFlight < Self.maxInFlight { full = false }
        return outcomes
    }

    private func start(fd: CInt) {
        let job = HandshakeJob(ec: node.ec, listenFD: node.listenFD, fd: fd, results: results)
        do {
            let thread = try PThread.spawn(name: "dist-handshake") { job.run() }
            pthread_detach(thread)
            inFlight += 1
        } catch {
            closeFD(fd)
            counters.distHandshakesRefused.add(1, ordering: .relaxed)
            logger.warning("Cannot start a distribution handshake thread", metadata: ["error": "\(error)"])
        }
    }
}

/// One handshake: its connection, a private copy of the node's `ei_cnode`, and where to report.
///
/// `@unchecked Sendable`: made on the distribution thread and then used only by its handshake thread;
/// the `ei_cnode` copy is that thread's alone.
private final class HandshakeJob: @unchecked Sendable {
    private let ec: UnsafeMutablePointer<ei_cnode>
    private let listenFD: CInt
    private let fd: CInt
    private let results: Mailbox<DistributionAcceptor.Outcome>

    init(ec: ei_cnode, listenFD: CInt, fd: CInt, results: Mailbox<DistributionAcceptor.Outcome>) {
        self.ec = .allocate(capacity: 1)
        self.ec.initialize(to: ec)
        self.listenFD = listenFD
        self.fd = fd
        self.results = results
    }

    deinit {
        ec.deinitialize(count: 1)
        ec.deallocate()
    }

    func run() {
        var connection = ErlConnect()
        let rc = CEI_accept_handshake(ec, listenFD, fd, DistributionAcceptor.handshakeTimeoutMillis, &connection)
        if rc >= 0 {
            results.post(.connected(fd: rc, name: String(cString: CEI_conn_nodename(&connection))))
        } else {
            results.post(.failed(erlErrno: CEI_erl_errno()))
        }
    }
}
