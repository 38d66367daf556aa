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
    private let counters: Counters
    let limiter: HandshakeLimiter
    private let addresses: AddressLimiter
    let logger: Logger

    let epfd: CInt
    var table = ConnectionTable()
    var config: ReactorConfig?
    private var listeners: [CInt: Listener] = [:]
    /// Listeners taken out of epoll after EMFILE with no reserve fd left, and when to put them back.
    private var pausedListeners: [(listener: Listener, until: Int64)] = []
    /// Closed and reopened around an accept when the process is out of fds, so that the pending
    /// connection can be taken off the queue and closed instead of waking us again at once.
    private var reserveFD: CInt
    private var lastEMFILELog: Int64 = 0
    /// Per-thread read buffer; bytes stay in a connection only while they are pending.
    var scratch: UnsafeMutableRawBufferPointer
    private var nextSequence: UInt64 = 1
    /// Connections on their way out: flushing before a close (`.closing` set), or half-closed by the
    /// client and waiting for their owner's `close` (see `Reactor+HalfClose.swift`).
    var closing: [UInt64: Closing] = [:]
    /// Sockets closed as connections but not yet as fds (see `LingeringSockets`).
    var lingering = LingeringSockets()
    /// Connections announced with `megaphone_connect` and never asked for data yet, and when they are
    /// given up on (`announce_timeout`; see `Reactor+AnnounceDeadline.swift`).
    var announced: [UInt64: Int64] = [:]
    /// The opening stage's clocks: handshake deadlines and stream header watches.
    var opening = StreamOpening()
    private var outbox: [ReactorOutput] = []
    /// `send_data` bytes of the current command batch, by ConnId, and the order they came in.
    private var coalesced: [UInt64: [UInt8]] = [:]
    private var coalescedOrder: [UInt64] = []
    /// Armed connections left unread while the distribution queue was full, until `.resumeReads`.
    private var starved: Set<UInt64> = []
    let distQueue: DistQueue
    /// put_data and send_data bytes the distribution thread posted to this reactor (and its siblings).
    let requests: DistQueue
    private var shuttingDown = false
    private var running = true
    private let events = UnsafeMutablePointer<epoll_event>.allocate(capacity: 256)

    struct Closing {
        var deadline: Int64
        var reason: CloseReason
        var notify: Bool
    }

    /// The most reactors a process can have: the index lives in 8 bits of the ConnId.
    public static let maxReactors = 256

    /// The most `send_data` bytes held for one connection within a command batch.
    static let coalesceLimit = 64 * 1024

    /// Which reactor owns a connection.
    public static func reactorIndex(of connID: UInt64) -> Int { Int(connID & 0xFF) }

    /// `inline`: the reactor has no thread of its own; the distribution thread calls `runOnce`, so
    /// its commands need no eventfd.
    init(index: Int, output: Mailbox<ReactorOutput>, counters: Counters,
         limiter: HandshakeLimiter = HandshakeLimiter(), addresses: AddressLimiter = AddressLimiter(),
         distQueue: DistQueue = DistQueue(limit: 64 << 20), requests: DistQueue = DistQueue(limit: 64 << 20),
         inline: Bool = false, logger: Logger) throws(SystemError) {
        self.distQueue = distQueue
        self.requests = requests
        precondition(index >= 0 && index < Self.maxReactors, "reactor index out of range")
        self.index = index
        self.output = output
        self.counters = counters
        self.limiter = limiter
        self.addresses = addresses
        var logger = logger
        logger[metadataKey: "reactor"] = "\(index)"
        self.logger = logger
        commands = try Mailbox(signalling: !inline)
        epfd = try Epoll.epoll_create()
        reserveFD = Glibc.open("/dev/null", O_RDONLY | O_CLOEXEC)
        scratch = .allocate(byteCount: 64 * 1024, alignment: 16)
        try Epoll.add(epfd: epfd, fd: commands.wakeup.fd, events: Epoll.in, data: Token.wake)
    }

    deinit {
        events.deallocate()
        closeFD(epfd)
        if reserveFD >= 0 { closeFD(reserveFD) }
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
            runOnce(timeout: needsTimer ? 250 : -1)
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
        !closing.isEmpty || !pausedListeners.isEmpty || !opening.isEmpty
            || !lingering.isEmpty || !announced.isEmpty
    }

    /// Whether commands wait that no eventfd announces (an inline reactor's).
    public var hasUnsignalledCommands: Bool { !commands.signalling && !commands.isEmpty }

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
                if let listener = listeners[Token.fd(data)] { accept(from: listener) }
            case 3:
                lingering.drain(Token.fd(data), scratch: scratch)
            case _:
                let fd = Token.fd(data)
                guard table.contains(fd: fd), UInt32(table[fd].generation) == Token.generation(data) else { continue }
                handleIO(fd, events: ev.events)
            }
        }
        if needsTimer { sweep(now: monotonicMillis()) }
        if shuttingDown && table.count == 0 {
            outbox.append(.drained(reactor: index))
            running = false
            // Not waited for: their clients have had everything we had for them.
            lingering.closeAll()
        }
        if !outbox.isEmpty {
            output.post(contentsOf: outbox)
            outbox.removeAll(keepingCapacity: true)
        }
    }

    func emit(to pid: PidRef, _ event: Event) {
        guard !pid.isNone else { return }
        outbox.append(.send(to: pid, event))
    }

    /// Where a connection's notifications go: its owner, else the controller.
    func recipient(of slot: ConnectionSlot) -> PidRef {
        slot.owner.isNone ? (config?.controller ?? .none) : slot.owner
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
                guard !shuttingDown, listeners[listener.fd] == nil else { continue }
                do {
                    try Epoll.add(epfd: epfd, fd: listener.fd, events: Epoll.in | Epoll.exclusive,
                                  data: Token.listener(listener.fd))
                    listeners[listener.fd] = listener
                } catch {
                    logger.error("Cannot watch listener", metadata: ["listener": "\(listener.bound)", "error": "\(error)"])
                }
            case .adopt(let fd, let listener):
                guard let config, !shuttingDown else {
                    load.subtract(1, ordering: .relaxed)
                    closeFD(fd)
                    continue
                }
                admit(fd, from: listener, config: config)
            case .removeListener(let listener):
                removeListener(listener)
            case .getData(let owner, let id):
                getData(owner: owner, connID: id)
            case .putData(let replyTo, let id, let bytes):
                requests.taken(bytes.count)
                putData(replyTo: replyTo, connID: id, bytes: bytes)
            case .sendData(let id, let bytes):
                requests.taken(bytes.count)
                // Held to the end of the batch: a session's stanzas that came in one distribution
                // read leave in one write() (for TLS, one record). Past `coalesceLimit` what is held
                // goes first, so a flood meets the send queue limit (and its cheap drop) at once.
                guard let fd = establishedFD(of: id) else {
                    counters.unknownConnection.add(1, ordering: .relaxed)
                    continue
                }
                guard !table[fd].flags.contains(.closing) else { continue }
                if let held = coalesced[id]?.count, held + bytes.count <= Self.coalesceLimit {
                    coalesced[id]?.append(contentsOf: bytes)
                } else {
                    sendCoalesced(id)
                    coalesced[id] = bytes
                    coalescedOrder.append(id)
                }
            case .close(let id):
                sendCoalesced(id)
                guard let fd = establishedFD(of: id) else {
                    counters.unknownConnection.add(1, ordering: .relaxed)
                    continue
                }
                // Already closing (send queue full, header timeout): that close stands.
                guard !table[fd].flags.contains(.closing) else { continue }
                beginClose(fd, reason: .requested, notify: false)
            case .resumeReads:
                let ids = starved
                starved.removeAll(keepingCapacity: true)
                for id in ids {
                    guard let fd = establishedFD(of: id), table[fd].flags.contains(.armed) else { continue }
                    serve(fd)
                }
            case .nodeDown(let node):
                sendAllCoalesced()
                for fd in table.liveFDs where recipient(of: table[fd]).node == node {
                    closeConnection(fd, reason: .nodeDown, notify: nil)
                }
            case .shutdown:
                sendAllCoalesced()
                shuttingDown = true
                for listener in Array(listeners.values) { removeListener(listener) }
                pausedListeners.removeAll()
                for fd in table.liveFDs { beginClose(fd, reason: .shutdown, notify: true) }
            }
        }
        sendAllCoalesced()
    }

    /// `send_data` held by `handleCommands` for one connection, written now.
    private func sendCoalesced(_ id: UInt64) {
        guard let bytes = coalesced.removeValue(forKey: id) else { return }
        guard let fd = establishedFD(of: id) else {
            counters.unknownConnection.add(1, ordering: .relaxed)
            return
        }
        guard !table[fd].flags.contains(.closing) else { return }
        write(fd, bytes)
    }

    private func sendAllCoalesced() {
        for id in coalescedOrder { sendCoalesced(id) }
        coalescedOrder.removeAll(keepingCapacity: true)
    }

    private func removeListener(_ listener: Listener) {
        if listeners.removeValue(forKey: listener.fd) != nil {
            Epoll.delete(epfd: epfd, fd: listener.fd)
        }
        pausedListeners.removeAll { $0.listener === listener }
    }

    /// The fd of a connection that requests may name: one announced with `megaphone_connect`. A
    /// connection still in its STARTTLS opening or handshake is unknown to Erlang, whatever it guesses.
    private func establishedFD(of connID: UInt64) -> CInt? {
        guard let fd = table.fd(of: connID), table[fd].opening == .established else { return nil }
        return fd
    }

    private func getData(owner: PidRef, connID: UInt64) {
        guard let fd = establishedFD(of: connID) else {
            emit(to: owner, .requestError(tag: .connID(connID), reason: .unknownConnection))
            return
        }
        guard !table[fd].flags.contains(.closing) else { return }
        if !announced.isEmpty { announced[connID] = nil }
        table[fd].owner = owner
        table[fd].flags.insert(.armed)
        serve(fd)
    }

    private func putData(replyTo: PidRef?, connID: UInt64, bytes: [UInt8]) {
        guard let fd = establishedFD(of: connID), let config else {
            if let replyTo { emit(to: replyTo, .requestError(tag: .connID(connID), reason: .unknownConnection)) }
            return
        }
        let pending = table[fd].inbound?.count ?? 0
        guard bytes.count <= config.inputBufferLimit - pending else {
            if let replyTo { emit(to: replyTo, .requestError(tag: .connID(connID), reason: .inputBufferFull)) }
            return
        }
        guard !bytes.isEmpty else { return }
        if table[fd].inbound == nil { table[fd].inbound = ByteQueue() }
        table[fd].inbound?.append(bytes)
        if table[fd].flags.contains(.armed) { serve(fd) }
    }

    // MARK: accepting

    private func accept(from listener: Listener) {
        guard let config, !shuttingDown else { return }
        // Bounded, so that a connection storm cannot starve the clients already connected.
        for _ in 0..<64 {
            let fd: CInt
            do {
                switch try Socket.accept(listener.fd) {
                case .wouldBlock: return
                case .processed(let newFD): fd = newFD
                }
            } catch {
                switch error.errno {
                case EMFILE, ENFILE:
                    shedConnection(from: listener)
                    return
                case ECONNABORTED, EPROTO, EPERM:
                    continue
                default:
                    logger.error("accept failed", metadata: ["listener": "\(listener.bound)", "error": "\(error)"])
                    return
                }
            }
            // All reactors accept from the same listener, and one of them tends to win every wake-up
            // (seen: 14,591 of 15,000 connections on one of two reactors). Hand the connection to the
            // reactor that holds the fewest, so that busy clients spread over the cores.
            let target = siblings.min { $0.load.load(ordering: .relaxed) < $1.load.load(ordering: .relaxed) } ?? self
            let mine = load.load(ordering: .relaxed)
            if target !== self && target.load.load(ordering: .relaxed) < mine {
                target.load.add(1, ordering: .relaxed)
                target.commands.post(.adopt(fd: fd, listener: listener))
            } else {
                load.add(1, ordering: .relaxed)
                admit(fd, from: listener, config: config)
            }
        }
    }

    /// Takes an accepted fd into this reactor. `load` already counts it.
    private func admit(_ fd: CInt, from listener: Listener, config: ReactorConfig) {
        let total = counters.connections.add(1, ordering: .relaxed).newValue
        guard total <= config.maxConnections else {
            // Counted before the close, so that whoever sees the close also sees it counted.
            counters.connections.subtract(1, ordering: .relaxed)
            load.subtract(1, ordering: .relaxed)
            counters.closed(.maxConnections)
            closeFD(fd)
            logger.debug("Refused connection: max_connections reached", metadata: ["max_connections": "\(config.maxConnections)"])
            return
        }
        try? Socket.setOption(fd, CInt(IPPROTO_TCP), TCP_NODELAY, 1)
        guard let peer = Socket.peerAddress(fd), let local = Socket.localAddress(fd) else {
            // The client went away between accept and getpeername.
            counters.connections.subtract(1, ordering: .relaxed)
            load.subtract(1, ordering: .relaxed)
            closeFD(fd)
            counters.closed(.clientError)
            return
        }
        let now = monotonicMillis()
        let address: UInt32
        switch addresses.admit(peer.ip, now: now, maxPerIP: config.maxConnectionsPerIP, rate: config.connectionRate) {
        case .admitted(let handle):
            address = handle
        case .refused(let refusal):
            let reason: CloseReason = refusal == .tooMany ? .maxConnectionsPerIP : .connectionRate
            counters.connections.subtract(1, ordering: .relaxed)
            load.subtract(1, ordering: .relaxed)
            counters.closed(reason)
            closeFD(fd)
            logger.debug("Refused connection: per-address limit", metadata: ["peer": "\(peer)", "reason": "\(reason.name)"])
            return
        }
        let id = nextSequence << 8 | UInt64(index)
        nextSequence += 1
        let generation = table.insert(fd: fd, connID: id)
        table[fd].address = address
        do {
            try Epoll.add(epfd: epfd, fd: fd, events: Epoll.in | Epoll.out | Epoll.rdhup | Epoll.edgeTriggered,
                          data: Token.connection(fd, generation))
        } catch {
            table.remove(fd: fd)
            addresses.release(address, now: now, rate: config.connectionRate)
            counters.connections.subtract(1, ordering: .relaxed)
            load.subtract(1, ordering: .relaxed)
            closeFD(fd)
            counters.closed(.clientError)
            logger.warning("Cannot watch client socket", metadata: ["error": "\(error)"])
            return
        }
        counters.accepted.add(1, ordering: .relaxed)
        logger.debug("Accepted connection", metadata: ["connection.id": "\(id)", "peer": "\(peer)"])
        switch listener.bound.transport {
        case .tcp:
            opening.watchHeader(id, now: now, config: config)
            watchAnnouncement(id, now: now, config: config)
            emit(to: config.controller, .connected(connID: id, peer: peer, local: local, transport: .tcp))
        case .tls, .starttls:
            guard let context = config.tls else {
                closeConnection(fd, reason: .tlsError, notify: nil)
                return
            }
            guard limiter.acquire(peer.ip, max: config.maxHandshakesPerIP) else {
                logger.debug("Refused connection: too many handshakes from its address", metadata: ["peer": "\(peer)"])
                closeConnection(fd, reason: .handshakeLimit, notify: nil)
                return
            }
            opening.handshakes[id] = (monotonicMillis() + config.handshakeTimeoutMillis, peer.ip)
            if listener.bound.transport == .starttls {
                table[fd].opening = .startTLS(headerAnswered: false)
            } else {
                guard let session = TLSTransport(context: context, fd: fd) else {
                    closeConnection(fd, reason: .tlsError, notify: nil)
                    return
                }
                table[fd].transport = .tls(session)
                table[fd].opening = .handshake
            }
        }
    }

    /// Out of fds: take one pending connection off the queue and close it, using the reserve fd, so the
    /// level-triggered listener does not wake us again for the same client. Without a reserve, stop
    /// watching the listener for a second instead of spinning.
    private func shedConnection(from listener: Listener) {
        let now = monotonicMillis()
        if now - lastEMFILELog > 1_000 {
            lastEMFILELog = now
            logger.warning("Out of file descriptors: refusing new connections", metadata: ["listener": "\(listener.bound)"])
        }
        if reserveFD >= 0 {
            closeFD(reserveFD)
            if case .processed(let fd)? = try? Socket.accept(listener.fd) {
                counters.closed(.emfile)
                closeFD(fd)
            }
            reserveFD = Glibc.open("/dev/null", O_RDONLY | O_CLOEXEC)
            if reserveFD >= 0 { return }
        }
        Epoll.delete(epfd: epfd, fd: listener.fd)
        pausedListeners.append((listener, now + 1_000))
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
        switch table[fd].opening {
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

    /// Delivers one chunk to the owner of an armed connection, from pending input first, else from
    /// the socket. Disarms once a chunk is sent.
    func serve(_ fd: CInt) {
        guard let config else { return }
        let id = table[fd].connID
        if let inbound = table[fd].inbound, !inbound.isEmpty {
            let chunk = inbound.take(max: config.maxChunk)
            if inbound.isEmpty { table[fd].inbound = nil }
            deliver(fd, chunk)
            if table[fd].inbound == nil && table[fd].flags.contains(.peerClosed) { finishIfDrained(fd) }
            return
        }
        // Everything the client sent has been delivered, and the owner told.
        guard !table[fd].flags.contains(.eofNotified) else { return }
        guard table[fd].flags.contains(.readable) else { return }
        guard distQueue.mayRead() else {
            starved.insert(id)
            return
        }
        let buffer = UnsafeMutableRawBufferPointer(rebasing: scratch[0..<config.maxChunk])
        let (filled, end) = table[fd].transport.fill(fd, buffer, peerClosed: table[fd].flags.contains(.peerClosed))
        var eof = false
        var ended: (CloseReason, Event)? = nil
        switch end {
        case .open(let readable):
            if !readable { table[fd].flags.remove(.readable) }
        case .eof:
            eof = true
        case .failed(let reason, let closeReason, let detail):
            if let detail {
                logger.debug("TLS read failed", metadata: ["connection.id": "\(id)", "error": "\(detail)"])
            }
            ended = (closeReason, .error(connID: id, reason: reason))
        }
        if filled > 0 {
            counters.bytesIn.add(filled, ordering: .relaxed)
            deliver(fd, Array(UnsafeRawBufferPointer(rebasing: buffer[0..<filled])))
        }
        // The client has sent everything: tcp_closed follows the last chunk at once. Our side stays
        // open for what the owner sends back.
        if eof {
            clientFinished(fd)
        } else if let (reason, event) = ended {
            closeConnection(fd, reason: reason, notify: event)
        } else if table[fd].flags.contains(.peerClosed) {
            // A chunk that filled up just before the EOF: tcp_closed follows it all the same.
            finishIfDrained(fd)
        }
    }

    private func deliver(_ fd: CInt, _ chunk: [UInt8]) {
        table[fd].flags.remove(.armed)
        distQueue.added(chunk.count)
        if !opening.headerWatch.isEmpty { opening.lookForHeader(table[fd].connID, in: chunk) }
        counters.chunksDelivered.add(1, ordering: .relaxed)
        emit(to: table[fd].owner, .data(connID: table[fd].connID, bytes: chunk))
    }

    /// Writes what the socket takes now and queues the rest. Past `send_queue_limit` the connection is
    /// closed and its owner told `send_queue_full`.
    func write(_ fd: CInt, _ bytes: [UInt8]) {
        guard let config, !bytes.isEmpty else { return }
        let id = table[fd].connID
        var written = 0
        if table[fd].outbound == nil && table[fd].flags.contains(.writable) {
            var failure: (String, CloseReason)? = nil
            bytes.withUnsafeBytes { all in
                while written < all.count {
                    switch table[fd].transport.write(fd, UnsafeRawBufferPointer(rebasing: all[written...])) {
                    case .wrote(let n): written += n
                    case .wouldBlock: return
                    case .failed(let reason, let closeReason):
                        failure = (reason, closeReason)
                        return
                    }
                }
            }
            counters.bytesOut.add(written, ordering: .relaxed)
            if let (reason, closeReason) = failure {
                closeConnection(fd, reason: closeReason, notify: .error(connID: id, reason: reason))
                return
            }
            if written < bytes.count { table[fd].flags.remove(.writable) }
        }
        guard written < bytes.count else { return }
        let queue = table[fd].outbound ?? ByteQueue()
        table[fd].outbound = queue
        guard queue.count + (bytes.count - written) <= config.sendQueueLimit else {
            overflow(fd, queue: queue)
            return
        }
        queue.append(written == 0 ? bytes : Array(bytes[written...]))
    }

    /// The client does not take its output fast enough: the send queue would pass `send_queue_limit`.
    /// The data that does not fit is dropped, an XMPP stream error is queued after what is already
    /// there, the owner is told `send_queue_full` at once (so that the session ends and stops sending),
    /// and the connection closes once the queue drains or after `flushTimeoutMillis`, whichever comes
    /// first. Memory stays at `send_queue_limit` plus the error. The queue holds whole `send_data`
    /// payloads (ejabberd sends whole elements), so the error follows a complete element.
    private func overflow(_ fd: CInt, queue: ByteQueue) {
        let id = table[fd].connID
        logger.debug("Send queue full", metadata: ["connection.id": "\(id)", "queued": "\(queue.count)"])
        queue.append(Array(Self.sendQueueFullError.utf8))
        emit(to: recipient(of: table[fd]), .error(connID: id, reason: "send_queue_full"))
        beginClose(fd, reason: .sendQueueFull, notify: false)
    }

    /// What a client whose send queue overflowed reads last (RFC 6120 §4.9.3.15).
    static let sendQueueFullError =
        "<stream:error><policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
        + "<text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>Too much unread data</text></stream:error>"
        + "</stream:stream>"

    /// Writes queued output after EPOLLOUT. Returns false if the connection was closed.
    func flush(_ fd: CInt) -> Bool {
        let id = table[fd].connID
        if let queue = table[fd].outbound {
            var failure: (String, CloseReason)? = nil
            var blocked = false
            while !queue.isEmpty && !blocked && failure == nil {
                queue.withFront { front in
                    switch table[fd].transport.write(fd, front) {
                    case .wrote(let n):
                        counters.bytesOut.add(n, ordering: .relaxed)
                        return n
                    case .wouldBlock:
                        blocked = true
                        return 0
                    case .failed(let reason, let closeReason):
                        failure = (reason, closeReason)
                        return 0
                    }
                }
            }
            if let (reason, closeReason) = failure {
                closeConnection(fd, reason: closeReason, notify: .error(connID: id, reason: reason))
                return false
            }
            if blocked {
                table[fd].flags.remove(.writable)
                return true
            }
            table[fd].outbound = nil
        }
        if table[fd].flags.contains(.closing), let state = closing[id] {
            closeConnection(fd, reason: state.reason, notify: state.notify ? .closed(connID: id) : nil)
            return false
        }
        return true
    }

    /// Closes now if nothing is queued; otherwise stops reading and lets the queue drain, for at most
    /// `flushTimeoutMillis`.
    func beginClose(_ fd: CInt, reason: CloseReason, notify: Bool) {
        let id = table[fd].connID
        guard let queue = table[fd].outbound, !queue.isEmpty else {
            closeConnection(fd, reason: reason, notify: notify ? .closed(connID: id) : nil)
            return
        }
        table[fd].flags.insert(.closing)
        table[fd].flags.remove(.armed)
        let timeout = config?.flushTimeoutMillis ?? 5_000
        closing[id] = Closing(deadline: monotonicMillis() + timeout, reason: reason, notify: notify)
    }

    func closeConnection(_ fd: CInt, reason: CloseReason, notify event: Event?) {
        guard let slot = table.remove(fd: fd) else { return }
        var reason = reason
        var event = event
        // A client that half-closed ended its connection, whoever closes the rest of it; its owner
        // has heard `tcp_closed` already and hears nothing more.
        if slot.flags.contains(.eofNotified) {
            event = nil
            if [.requested, .flushTimeout, .shutdown, .nodeDown].contains(reason) { reason = .clientClosed }
        }
        // A limit's close that ends early (the client hangs up or resets while its stream error is
        // flushed) still counts as that limit, and tells the owner nothing more than it was told.
        if let state = closing.removeValue(forKey: slot.connID),
           state.reason == .sendQueueFull || state.reason == .streamHeaderTimeout {
            reason = state.reason
            if !state.notify { event = nil }
        }
        if let ip = opening.forget(slot.connID) { limiter.release(ip) }
        if !announced.isEmpty { announced[slot.connID] = nil }
        addresses.release(slot.address, now: monotonicMillis(), rate: config?.connectionRate)
        slot.transport.close()
        // Counted before the close, so that a client that sees the close also finds it in stats.
        counters.connections.subtract(1, ordering: .relaxed)
        load.subtract(1, ordering: .relaxed)
        counters.closed(reason)
        retire(fd, reason: reason)
        logger.debug("Closed connection", metadata: ["connection.id": "\(slot.connID)", "reason": "\(reason.name)"])
        // Nobody has heard of a connection before its megaphone_connect: nobody to tell.
        if let event, slot.opening == .established { emit(to: recipient(of: slot), event) }
    }

    private func sweep(now: Int64) {
        if !opening.isEmpty { sweepOpenings(now: now) }
        if !announced.isEmpty { sweepAnnouncements(now: now) }
        if !lingering.isEmpty { lingering.sweep(now: now) }
        for (id, state) in closing where state.deadline <= now {
            if let fd = table.fd(of: id) {
                // A close that was itself a refusal keeps its reason; a requested one ran out of time.
                let reason: CloseReason = state.reason == .requested || state.reason == .shutdown ? .flushTimeout : state.reason
                closeConnection(fd, reason: reason, notify: state.notify ? .closed(connID: id) : nil)
            }
            closing[id] = nil
        }
        let due = pausedListeners.filter { $0.until <= now }
        pausedListeners.removeAll { $0.until <= now }
        for (listener, _) in due where listeners[listener.fd] != nil {
            try? Epoll.add(epfd: epfd, fd: listener.fd, events: Epoll.in | Epoll.exclusive,
                           data: Token.listener(listener.fd))
        }
    }
}
