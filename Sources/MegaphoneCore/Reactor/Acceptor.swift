#if canImport(Glibc)
import Glibc
#endif

/// The accept stage: takes clients off the shared listeners, spreads them over the reactors, and
/// admits them under `max_connections` and the per-address limits (`AddressLimiter`). What it hands
/// on is a slot in the connection table with its ConnId; the opening stage (`StreamOpening`) takes it
/// from there.
///
/// Per reactor: the listeners it watches, those paused after EMFILE, and the reserve fd. Nothing per
/// connection. Owned by the reactor's thread.
struct Acceptor {
    var listeners: [CInt: Listener] = [:]
    /// Listeners taken out of epoll after EMFILE with no reserve fd left, and when to put them back.
    var paused: [(listener: Listener, until: Int64)] = []
    /// Closed and reopened around an accept when the process is out of fds, so that the pending
    /// connection can be taken off the queue and closed instead of waking us again at once.
    private var reserveFD: CInt = openDevNull()
    var lastEMFILELog: Int64 = 0
    private var nextSequence: UInt64 = 1

    /// A new ConnId: the reactor's sequence number above its index (`Reactor.reactorIndex(of:)`).
    mutating func nextConnID(reactor index: Int) -> UInt64 {
        let id = nextSequence << 8 | UInt64(index)
        nextSequence += 1
        return id
    }

    /// Out of fds: frees the reserve fd, takes one pending connection off `listener`'s queue and
    /// closes it, and takes the reserve back. False when there is no reserve (any more).
    mutating func shedWithReserve(_ listener: Listener, counters: Counters) -> Bool {
        guard reserveFD >= 0 else { return false }
        closeFD(reserveFD)
        if case .processed(let fd)? = try? Socket.accept(listener.fd) {
            counters.closed(.emfile)
            closeFD(fd)
        }
        reserveFD = openDevNull()
        return reserveFD >= 0
    }

    /// Puts the listeners paused after EMFILE back into `epfd` once their second is up.
    mutating func resumePaused(now: Int64, epfd: CInt) {
        let due = paused.filter { $0.until <= now }
        paused.removeAll { $0.until <= now }
        for (listener, _) in due where listeners[listener.fd] != nil {
            try? Epoll.add(epfd: epfd, fd: listener.fd, events: Epoll.in | Epoll.exclusive,
                           data: Reactor.Token.listener(listener.fd))
        }
    }

    func closeReserve() {
        if reserveFD >= 0 { closeFD(reserveFD) }
    }
}

/// The reactor's side of the accept stage.
extension Reactor {
    func addListener(_ listener: Listener) {
        guard !shuttingDown, acceptor.listeners[listener.fd] == nil else { return }
        do {
            try Epoll.add(epfd: epfd, fd: listener.fd, events: Epoll.in | Epoll.exclusive,
                          data: Reactor.Token.listener(listener.fd))
            acceptor.listeners[listener.fd] = listener
        } catch {
            logger.error("Cannot watch listener", metadata: ["listener": "\(listener.bound)", "error": "\(error)"])
        }
    }

    func removeListener(_ listener: Listener) {
        if acceptor.listeners.removeValue(forKey: listener.fd) != nil {
            Epoll.delete(epfd: epfd, fd: listener.fd)
        }
        acceptor.paused.removeAll { $0.listener === listener }
    }

    /// Stops watching every listener (shutdown).
    func stopAccepting() {
        for listener in Array(acceptor.listeners.values) { removeListener(listener) }
        acceptor.paused.removeAll()
    }

    /// A connection another reactor accepted and handed to this one (`load` already counts it).
    func adopt(_ fd: CInt, from listener: Listener) {
        guard let config, !shuttingDown else {
            load.subtract(1, ordering: .relaxed)
            closeFD(fd)
            return
        }
        admit(fd, from: listener, config: config)
    }

    func accept(from listener: Listener) {
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
    func admit(_ fd: CInt, from listener: Listener, config: ReactorConfig) {
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
        let id = acceptor.nextConnID(reactor: index)
        let generation = table.insert(fd: fd, connID: id)
        table[fd].address = address
        let transport = listener.bound.transport
        table[fd].opening = switch transport {
        case .tcp: .init(.established, listener: .tcp)
        case .starttls: .init(.startTLS(headerAnswered: false), listener: .starttls)
        case .tls: .init(.handshake, listener: .tls)
        }
        counters.opened(via: transport)
        if config.parser == .parsed { table[fd].framing = .parsed(ParsedInput()) }
        do {
            try Epoll.add(epfd: epfd, fd: fd, events: Epoll.in | Epoll.out | Epoll.rdhup | Epoll.edgeTriggered,
                          data: Token.connection(fd, generation))
        } catch {
            table.remove(fd: fd)
            addresses.release(address, now: now, rate: config.connectionRate)
            counters.connections.subtract(1, ordering: .relaxed)
            counters.closed(via: transport)
            load.subtract(1, ordering: .relaxed)
            closeFD(fd)
            counters.closed(.clientError)
            logger.warning("Cannot watch client socket", metadata: ["error": "\(error)"])
            return
        }
        counters.accepted.add(1, ordering: .relaxed)
        logger.debug("Accepted connection", metadata: ["connection.id": "\(id)", "peer": "\(peer)"])
        switch transport {
        case .tcp:
            announce(fd, peer: peer, local: local, transport: .tcp, now: now, config: config)
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
            if transport == .tls {
                guard let session = TLSTransport(context: context, fd: fd) else {
                    closeConnection(fd, reason: .tlsError, notify: nil)
                    return
                }
                table[fd].transport = .tls(session)
            }
        }
    }

    /// Out of fds: take one pending connection off the queue and close it, using the reserve fd, so the
    /// level-triggered listener does not wake us again for the same client. Without a reserve, stop
    /// watching the listener for a second instead of spinning.
    func shedConnection(from listener: Listener) {
        let now = monotonicMillis()
        if now - acceptor.lastEMFILELog > 1_000 {
            acceptor.lastEMFILELog = now
            logger.warning("Out of file descriptors: refusing new connections", metadata: ["listener": "\(listener.bound)"])
        }
        if acceptor.shedWithReserve(listener, counters: counters) { return }
        Epoll.delete(epfd: epfd, fd: listener.fd)
        acceptor.paused.append((listener, now + 1_000))
    }
}
