import Logging
import Synchronization

import CLinux

#if canImport(Glibc)
import Glibc
#endif

/// One epoll loop on its own thread: accepts clients, moves their bytes, and reports to the
/// distribution thread. Every connection belongs to the reactor that accepted it; its ConnId carries
/// that reactor's index in the low 8 bits.
///
/// The loop moves bytes along a connection's stages, each in its own file, each keeping its
/// per-connection state as a value in the slot (`ConnectionSlot`) and its per-reactor state here:
/// accept (`Acceptor.swift`) → transport (`SocketTransport.swift`, `TLS/TLSTransport.swift`) →
/// opening (`StreamOpening.swift`) → framing (`Framing.swift`) → the link (`Outbox.swift`); reading
/// and flow control in `Reactor+Input.swift`, writing and the send queue in `Reactor+Output.swift`,
/// the way out in `Closing.swift` (and `Reactor+HalfClose`, `+Lingering`, `+AnnounceDeadline`).
///
/// Threading: `commands` may be posted to from any thread. Everything else is touched only by the
/// reactor's own thread inside `run()`; that is why the class is `@unchecked Sendable`.
///
/// Sockets are edge-triggered (EPOLLIN|EPOLLOUT|EPOLLRDHUP|EPOLLET, registered once): the `readable`
/// and `writable` flags remember readiness until a call hits EAGAIN, so arming a connection with
/// get_data costs no epoll_ctl. A connection is read only while armed, so a client that sends faster
/// than its owner asks is held back by the kernel (TCP flow control), not by our memory.
public final class Reactor: @unchecked Sendable {
    public let index: Int
    public let commands: Mailbox<ReactorCommand>
    /// Connections this reactor holds or has been handed; read by the others to balance accepts.
    public let load = Atomic<Int>(0)
    /// Every reactor of the process, this one included. Set once, before any reactor runs.
    public nonisolated(unsafe) var siblings: [Reactor] = []
    private let output: Mailbox<ReactorOutput>
    let counters: Counters
    let limiter: HandshakeLimiter
    let addresses: AddressLimiter
    let sessions: SessionCounts
    let backlog: NodeBacklog
    let logger: Logger

    let epfd: CInt
    var table = ConnectionTable()
    var config: ReactorConfig?
    /// The accept stage's state: listeners, paused listeners, the reserve fd.
    var acceptor = Acceptor()
    /// Per-thread read buffer; bytes stay in a connection only while they are pending.
    var scratch: UnsafeMutableRawBufferPointer
    /// Connections on their way out: flushing before a close (`.closing` set), or half-closed by the
    /// client and waiting for their owner's `close` (see `Reactor+HalfClose.swift`).
    var closing: [UInt64: Closing] = [:]
    /// Sockets closed as connections but not yet as fds (see `LingeringSockets`).
    var lingering = LingeringSockets()
    /// Connections announced with `megaphone_connect` and never asked for data yet, and when they are
    /// given up on (`announce_timeout`; see `Reactor+AnnounceDeadline.swift`).
    var announced: [UInt64: Int64] = [:]
    /// Connections announced and not yet asked for data: their `owner` is still the controller they
    /// were announced to (see `Reactor+Announce.swift`).
    var unclaimed: Set<UInt64> = []
    /// The opening stage's clocks: handshake deadlines and stream header watches.
    var opening = StreamOpening()
    /// What this turn has for the distribution thread.
    var outbox = Outbox()
    /// `send_data` bytes of the current command batch, by ConnId, and the order they came in.
    var coalesced: [UInt64: [UInt8]] = [:]
    var coalescedOrder: [UInt64] = []
    /// Armed connections left unread while the distribution queue was full, until `.resumeReads`.
    var starved: Set<UInt64> = []
    /// Parsed connections that stopped reading with input left and credit to spend, so that one
    /// fast client cannot hold the loop: served again next turn.
    var again: [UInt64] = []
    /// Parsed connections held back by their shaper, and when to read them again.
    var paced: [UInt64: Int64] = [:]
    /// When the next idle sweep is due (`Reactor+Idle.swift`).
    var nextIdleSweep: Int64 = 0
    let toErlang: ByteBudget
    /// put_data and send_data bytes the distribution thread posted to this reactor (and its siblings).
    let toClients: ByteBudget
    var shuttingDown = false
    private var running = true
    private let events = UnsafeMutablePointer<epoll_event>.allocate(capacity: 256)

    /// The most reactors a process can have: the index lives in 8 bits of the ConnId.
    public static let maxReactors = 256

    /// Which reactor owns a connection.
    public static func reactorIndex(of connID: UInt64) -> Int { Int(connID & 0xFF) }

    /// `inline`: the reactor has no thread of its own; the distribution thread calls `runOnce`, so
    /// its commands need no eventfd.
    init(index: Int, context: NodeContext, inline: Bool = false) throws(SystemError) {
        toErlang = context.toErlang
        toClients = context.toClients
        precondition(index >= 0 && index < Self.maxReactors, "reactor index out of range")
        self.index = index
        output = context.output
        counters = context.counters
        limiter = context.handshakes
        addresses = context.addresses
        sessions = context.sessions
        backlog = context.backlog
        var logger = context.logger
        logger[metadataKey: "reactor"] = "\(index)"
        self.logger = logger
        commands = try Mailbox(signalling: !inline)
        epfd = try Epoll.epoll_create()
        scratch = .allocate(byteCount: 64 * 1024, alignment: 16)
        try Epoll.add(epfd: epfd, fd: commands.wakeup.fd, events: Epoll.in, data: Token.wake)
    }

    deinit {
        events.deallocate()
        closeFD(epfd)
        acceptor.closeReserve()
        scratch.deallocate()
    }

    // MARK: epoll user data

    /// epoll's 64-bit user data: kind (8 bits), generation (24 bits), fd (32 bits). The generation
    /// catches an event for an fd that was closed and reused within one epoll_wait batch.
    enum Token {
        static let wake: UInt64 = 0
        static func listener(_ fd: CInt) -> UInt64 { 1 << 56 | UInt64(UInt32(bitPattern: fd)) }
        static func connection(_ fd: CInt, _ generation: UInt32) -> UInt64 {
            2 << 56 | UInt64(generation & 0xFF_FFFF) << 32 | UInt64(UInt32(bitPattern: fd))
        }
        /// A socket in its lingering close: no generation, its fd is ours until `lingering` closes it.
        static func lingering(_ fd: CInt) -> UInt64 { 3 << 56 | UInt64(UInt32(bitPattern: fd)) }
        static func kind(_ data: UInt64) -> UInt64 { data >> 56 }
        static func fd(_ data: UInt64) -> CInt { CInt(bitPattern: UInt32(truncatingIfNeeded: data)) }
        static func generation(_ data: UInt64) -> UInt32 { UInt32(truncatingIfNeeded: data >> 32) & 0xFF_FFFF }
    }

    // MARK: loop

    /// Runs until a `.shutdown` command has been carried out. Call on the reactor's own thread only.
    public func run() {
        while running {
            runOnce(timeout: !again.isEmpty ? 0 : !paced.isEmpty ? 10 : needsTimer ? 250 : -1)
        }
    }

    /// False once a `.shutdown` has been carried out (and `.drained` posted).
    public var isRunning: Bool { running }

    /// The epoll descriptor, for a distribution thread that runs this reactor inline: readable when
    /// `runOnce(timeout: 0)` has work.
    public var pollFD: CInt { epfd }

    /// Whether closing or lingering connections, paused listeners, handshakes, header watches or
    /// announce deadlines need `runOnce` at least every 250 ms.
    public var needsTimer: Bool {
        !closing.isEmpty || !acceptor.paused.isEmpty || !opening.isEmpty
            || !lingering.isEmpty || !announced.isEmpty || !again.isEmpty || !paced.isEmpty
            || (config?.hibernateAfterMillis != nil && table.count > 0)
    }

    /// Whether commands wait that no eventfd announces (an inline reactor's).
    public var hasUnsignalledCommands: Bool { !commands.signalling && !commands.isEmpty }

    /// Whether parsed connections wait to be served again (`again`): the next turn must not block.
    public var hasInputToServe: Bool { !again.isEmpty }

    /// One turn: waits up to `timeout` ms (-1: forever) for I/O and commands, handles them, runs the
    /// timers and posts what it has for the distribution thread.
    /// `pollEvents: false` skips epoll_wait, for a caller whose poll() saw `pollFD` quiet.
    public func runOnce(timeout: CInt, pollEvents: Bool = true) {
        guard running else { return }
        let capacity: CInt = 256
        if !commands.signalling && !commands.isEmpty { handleCommands() }
        var n = 0
        if pollEvents {
            do {
                n = try Epoll.epoll_wait(epfd: epfd, events: events, maxevents: capacity, timeout: timeout)
            } catch {
                logger.error("epoll_wait failed", metadata: ["error": "\(error)"])
            }
        }
        for i in 0..<n {
            let ev = events[i]
            let data = ev.data.u64
            switch Token.kind(data) {
            case 0:
                handleCommands()
            case 1:
                if let listener = acceptor.listeners[Token.fd(data)] { accept(from: listener) }
            case 3:
                lingering.drain(Token.fd(data), scratch: scratch)
            case _:
                let fd = Token.fd(data)
                guard table.contains(fd: fd), UInt32(table[fd].generation) == Token.generation(data) else { continue }
                handleIO(fd, events: ev.events)
            }
        }
        if !again.isEmpty { serveAgain() }
        if needsTimer { sweep(now: monotonicMillis()) }
        if shuttingDown && table.count == 0 {
            outbox.append(.drained(reactor: index))
            running = false
            // Not waited for: their clients have had everything we had for them.
            lingering.closeAll()
        }
        outbox.post(to: output)
    }

    func emit(to pid: PidRef, _ event: Event) {
        outbox.emit(to: pid, event)
    }

    /// Where a connection's notifications go: its owner, which is the controller it was announced to
    /// until a get_data names another (`.none` before the announcement: nobody knows of it).
    func recipient(of slot: ConnectionSlot) -> PidRef {
        slot.owner
    }

    // MARK: commands

    private func handleCommands() {
        for command in commands.takeAll() {
            switch command {
            case .configure(let newConfig):
                config = newConfig
                if newConfig.maxChunk > scratch.count {
                    scratch.deallocate()
                    scratch = .allocate(byteCount: newConfig.maxChunk, alignment: 16)
                }
            case .addListener(let listener):
                addListener(listener)
            case .adopt(let fd, let listener):
                adopt(fd, from: listener)
            case .removeListener(let listener):
                removeListener(listener)
            case .getData(let owner, let id):
                getData(owner: owner, connID: id)
            case .putData(let replyTo, let id, let bytes):
                toClients.taken(bytes.count)
                putData(replyTo: replyTo, connID: id, bytes: bytes)
            case .sendData(let id, let bytes):
                toClients.taken(bytes.count)
                sendData(connID: id, bytes: bytes)
            case .close(let id):
                close(connID: id)
            case .credit(let id, let elements):
                credit(connID: id, elements: elements)
            case .resetStream(let id):
                resetStream(connID: id)
            case .shaper(let id, let rate):
                setShaper(connID: id, rate: rate)
            case .resumeReads:
                resumeReads()
            case .nodeDown(let node):
                sendAllCoalesced()
                for fd in table.liveFDs where recipient(of: table[fd]).node == node {
                    closeConnection(fd, reason: .nodeDown, notify: nil)
                }
            case .release(let node):
                sendAllCoalesced()
                for fd in table.liveFDs where recipient(of: table[fd]).node == node {
                    beginClose(fd, reason: .shutdown, notify: true)
                }
            case .shutdown:
                sendAllCoalesced()
                shuttingDown = true
                stopAccepting()
                for fd in table.liveFDs { beginClose(fd, reason: .shutdown, notify: true) }
            }
        }
        sendAllCoalesced()
    }

    /// The fd of a connection that requests may name: one announced with `megaphone_connect`. A
    /// connection still in its STARTTLS opening or handshake is unknown to Erlang, whatever it guesses.
    func establishedFD(of connID: UInt64) -> CInt? {
        guard let fd = table.fd(of: connID), table[fd].opening.stage == .established else { return nil }
        return fd
    }

    // MARK: connection I/O

    func handleIO(_ fd: CInt, events: UInt32) {
        let id = table[fd].connID
        if events & Epoll.err != 0 {
            let err = Socket.pendingError(fd)
            closeConnection(fd, reason: .clientError,
                            notify: err == 0 ? .closed(connID: id) : .error(connID: id, reason: ErrnoName.erlang(err)))
            return
        }
        switch table[fd].opening.stage {
        case .startTLS:
            if events & (Epoll.in | Epoll.rdhup | Epoll.hup) != 0 { negotiateStartTLS(fd) }
            return
        case .handshake:
            driveHandshake(fd)
            return
        case .established:
            break
        }
        if events & Epoll.in != 0 { table[fd].flags.insert(.readable) }
        if events & Epoll.out != 0 || (table[fd].transport.writeMayWaitForRead && table[fd].outbound != nil) {
            if events & Epoll.out != 0 { table[fd].flags.insert(.writable) }
            guard flush(fd) else { return }
        }
        if events & (Epoll.rdhup | Epoll.hup) != 0 && !table[fd].flags.contains(.peerClosed) {
            // The client shut its side. What it sent before is read like any input: on get_data, a
            // chunk at a time, within the distribution queue's limit; the EOF itself is read last.
            table[fd].flags.formUnion([.peerClosed, .readable])
        }
        if table[fd].flags.contains(.armed) {
            serve(fd)
        } else if table[fd].flags.contains(.peerClosed) {
            finishIfDrained(fd)
        }
    }

    private func sweep(now: Int64) {
        if !opening.isEmpty { sweepOpenings(now: now) }
        if !announced.isEmpty { sweepAnnouncements(now: now) }
        if !lingering.isEmpty { lingering.sweep(now: now) }
        if !closing.isEmpty { sweepClosing(now: now) }
        if !acceptor.paused.isEmpty { acceptor.resumePaused(now: now, epfd: epfd) }
        if !paced.isEmpty { sweepPaced(now: now) }
        if config?.hibernateAfterMillis != nil { sweepIdle(now: now) }
    }
}
