import CEI
import Logging

import CLinux

#if canImport(Glibc)
import Glibc
#endif

/// The one thread that owns every distribution socket.
///
/// ei's receive calls answer ticks by writing to the socket, so a second thread writing to the same fd
/// corrupts the stream (seen in 2 of 3 runs of the prototype). Here one thread polls the distribution
/// listener, each connected Erlang node, the reactors' output mailbox and a signalfd; it decodes
/// requests, hands connection work to the reactors, and encodes and sends what they report back.
/// Every ei call on an established connection happens on this thread; handshakes run on threads of
/// their own (`DistributionAcceptor`).
///
/// Nothing here waits for a peer: one silent, slow or frozen peer must not hold the others, nor the
/// clients. The socket callbacks (`CEI_socket_callbacks`, sockets.c) buffer both ways. Input is read
/// without waiting (`CEI_fill_input`) when poll() reports it, and ei's receive is called only once a
/// whole message is buffered, so it never reads from the kernel. What ei writes goes out with
/// MSG_DONTWAIT; what the kernel does not take stays buffered, POLLOUT is watched for it, and
/// `flushPeers()` sends it once per loop turn (so a burst of events costs one `sendmsg`). A peer with
/// more than `outputLimit` bytes waiting is dropped.
public final class DistributionLink {
    private struct Peer {
        var fd: CInt
        var name: String
        var node: UInt16
        /// Last time anything (a message or a tick) arrived from the peer. What we send does not count:
        /// the kernel of a frozen (SIGSTOPped) peer still acknowledges it.
        var lastHeard: Int64
        /// Client bytes written for this peer that are still in user space, by the output position
        /// (`CEI_output_written`) at which they end: they leave `toErlang` once the kernel took them,
        /// so that a slow peer pushes back on the clients instead of its output growing.
        var held: [(end: UInt64, bytes: Int)] = []
        /// The sum of `held`.
        var heldBytes = 0
        /// The part of `heldBytes` (always the oldest entries of `held`) already taken off `toErlang`:
        /// a node marked behind no longer counts in the shared budget, so that its bytes cannot
        /// pause the clients of the others. Its own clients are held back by the mark instead.
        var offBudget = 0
        /// Marked behind in `backlog`: its connections are not read until it catches up.
        var behind = false
    }

    private struct Shutdown {
        var waiters: [(pid: PidRef, ref: [UInt8])]
        var drained: Set<Int>
        var deadline: Int64
    }

    private let node: CNode
    private let reactors: [Reactor]
    private let output: Mailbox<ReactorOutput>
    private let inline: Reactor?
    private let toErlang: ByteBudget
    /// put_data and send_data bytes posted to reactor threads and not yet taken by them.
    private let toClients: ByteBudget
    /// The header of the message being received. erlang_msg holds several atom-sized arrays (about
    /// 5 KB): made once, not zeroed for every message.
    private let messageHeader: UnsafeMutablePointer<erlang_msg> = {
        let header = UnsafeMutablePointer<erlang_msg>.allocate(capacity: 1)
        header.initialize(to: erlang_msg())
        return header
    }()
    private let counters: Counters
    private let logger: Logger
    private let netTicktimeMillis: Int64
    private let names = NodeNames()
    private let encoder = TermEncoder()
    private let selfPid: erlang_pid
    /// This run's ConnIds (references carrying the node's name and creation).
    private let refs: ConnectionRefs
    private var receiveBuffer = ei_x_buff()
    private var peers: [Peer] = []
    /// Client input handed to the peers this turn: its read time and count (see `timeSentInputs`).
    private var sentInputs: [(readAt: Int64, count: Int)] = []
    private let signals: SignalFD
    private let acceptor: DistributionAcceptor
    /// Output that may wait for one peer before it is dropped. Client data for it is held to
    /// `toErlang.limit` (plus a chunk per reactor) by the pause of client reads; the rest is replies
    /// and events, which a reading peer takes at once.
    private let outputLimit: Int

    /// Who hears of new connections: one controller per Erlang node (an ejabberd cluster attaches
    /// every node of it). The listeners stay open while any is attached.
    private var controllers = ControllerList() {
        didSet { counters.controllers.store(controllers.count, ordering: .relaxed) }
    }
    /// Open announced connections by owning node (shared with the reactors).
    private let sessions: SessionCounts
    /// Nodes whose connections the reactors leave unread while they are behind (`NodeBacklog`).
    private let backlog: NodeBacklog
    private var options = StartOptions()
    /// What attached controllers asked for and were refused (`config_mismatch`), by node. When every
    /// attached controller has asked for the same configuration, the node takes it: how a cluster's
    /// nodes change shared options one by one (`reload_config` on each). Emptied when a start is
    /// applied; a controller's entry goes when it detaches.
    private var proposals: [UInt16: StartOptions] = [:]
    private var listeners = ListenerSet()
    private var shutdown: Shutdown? = nil
    /// What the reactors run with since the last start (for a SIGHUP reload).
    private var reactorConfig: ReactorConfig? = nil
    private var running = true
    /// What else a SIGHUP reloads (`ServerConfiguration.onReload`).
    private let onReload: (@Sendable () -> Void)?

    /// Takes over `node`. Blocks SIGINT, SIGTERM and SIGHUP for the calling thread (call it before
    /// starting other threads so they inherit the mask) and reads them from a signalfd instead.
    /// `inline`: a reactor without a thread of its own, run by this thread between its own work.
    public init(node: CNode, reactors: [Reactor], inline: Reactor? = nil, context: NodeContext,
                netTicktimeSeconds: Int, onReload: (@Sendable () -> Void)? = nil) throws(SystemError) {
        self.onReload = onReload
        toErlang = context.toErlang
        toClients = context.toClients
        self.node = node
        self.reactors = reactors
        self.inline = inline
        output = context.output
        counters = context.counters
        sessions = context.sessions
        backlog = context.backlog
        logger = context.logger
        netTicktimeMillis = Int64(netTicktimeSeconds) * 1000
        outputLimit = toErlang.limit + 64 << 20
        selfPid = node.selfPid
        refs = ConnectionRefs(node: node.nodeName, creation: node.selfPid.creation)
        acceptor = try DistributionAcceptor(node: node, counters: context.counters, logger: context.logger)
        ei_x_new(&receiveBuffer)
        signals = try SignalFD()
    }

    deinit {
        messageHeader.deallocate()
        ei_x_free(&receiveBuffer)
    }

    /// Blocks the signals the link reads from its signalfd. Call before any other thread starts.
    static func blockSignals() {
        SignalFD.blockInCallingThread()
    }

    // MARK: loop

    /// Serves until a shutdown has completed.
    public func run() {
        logger.info("Waiting for Erlang nodes", metadata: ["node": "\(node.nodeName)", "dist.port": "\(node.port)",
                                                         "dist.interface": "\(node.interface)"])
        while running {
            let accepting = shutdown == nil && acceptor.isAccepting
            // Reactor threads behind on put_data/send_data bytes: read no request until they catch
            // up, so TCP holds ejabberd back (its distribution queue to us fills and busy_dist_port
            // suspends the senders) instead of the reactors' mailboxes growing. The reactor whose take
            // brings the bytes under the limit signals `toClients.roomSignal`, which wakes this poll.
            let throttled = toClients.queuedBytes >= toClients.limit
            if throttled { toClients.pausedReads.add(1, ordering: .relaxed) }
            var fds = [
                pollfd(fd: output.wakeup.fd, events: Int16(POLLIN), revents: 0),
                pollfd(fd: signals.fd, events: Int16(POLLIN), revents: 0),
                // A negative fd is ignored by poll(): not accepting (shutting down, or paused after EMFILE).
                pollfd(fd: accepting ? node.listenFD : -1, events: Int16(POLLIN), revents: 0),
                pollfd(fd: acceptor.results.wakeup.fd, events: Int16(POLLIN), revents: 0),
                pollfd(fd: toClients.roomSignal?.fd ?? -1, events: Int16(POLLIN), revents: 0),
            ]
            if let inline { fds.append(pollfd(fd: inline.pollFD, events: Int16(POLLIN), revents: 0)) }
            let firstPeer = fds.count
            fds += peers.map { peer in
                let input = throttled ? 0 : Int16(POLLIN)
                let output = CEI_pending_output(peer.fd) > 0 ? Int16(POLLOUT) : 0
                return pollfd(fd: peer.fd, events: input | output, revents: 0)
            }
            // A whole message already in user space is invisible to poll(): don't sleep on it.
            let buffered = !throttled && peers.contains { CEI_input_ready($0.fd) != 0 }
            let inlineBusy = inline.map { $0.hasUnsignalledCommands || $0.hasInputToServe } ?? false
            let timeout: CInt = buffered || inlineBusy ? 0 : inline?.needsTimer == true ? 250 : 1_000
            let n = Poll.poll(&fds, timeout: timeout)
            if n > 0 {
                if fds[1].revents != 0 { handleSignals() }
                if fds[0].revents != 0 { handleReactorOutput() }
                if fds[3].revents != 0 { adoptHandshakes() }
                if fds[4].revents != 0 { toClients.roomSignal?.drain() }
                if fds[2].revents != 0 && shutdown == nil { acceptor.acceptReady() }
                let readable = Int16(POLLIN) | Int16(POLLHUP) | Int16(POLLERR)
                for p in fds[firstPeer...] where p.revents & readable != 0 && !throttled { receive(from: p.fd) }
            }
            if buffered {
                for peer in peers where CEI_input_ready(peer.fd) != 0 { receive(from: peer.fd) }
            }
            if let inline, inline.isRunning {
                // What the peers asked for is done in the same turn, and what it produced is sent in it.
                let ready = n > 0 && fds[firstPeer - 1].revents != 0
                if ready || inline.hasUnsignalledCommands || inline.needsTimer {
                    inline.runOnce(timeout: 0, pollEvents: ready)
                    handleReactorOutput()
                }
            }
            flushPeers()
            timeSentInputs()
            dropSilentPeers()
            if let shutdown, monotonicMillis() > shutdown.deadline {
                logger.warning("Shutdown deadline passed; stopping with connections still open")
                finishShutdown()
            }
        }
    }

    private func handleSignals() {
        for signal in signals.take() {
            if signal == SIGHUP {
                reloadCertificate()
                onReload?()
                continue
            }
            logger.info("Signal received: shutting down", metadata: ["signal": "\(signal)"])
            if shutdown == nil { beginShutdown(waiter: nil) } else { finishShutdown() }
        }
    }

    /// SIGHUP: reads the certfile of the last start again. New connections get the new certificate;
    /// established ones keep theirs. A file that does not load leaves the old one in use.
    private func reloadCertificate() {
        guard var config = reactorConfig, let current = config.tls else {
            logger.info("SIGHUP: no certificate to reload")
            return
        }
        do {
            config.tls = try TLSContext(current.options)
            counters.certificateLoads.add(1, ordering: .relaxed)
        } catch {
            counters.certificateLoadFailures.add(1, ordering: .relaxed)
            logger.error("SIGHUP: cannot reload the certificate; keeping the old one",
                         metadata: ["certfile": "\(current.options.certfile)", "error": "\(error)"])
            return
        }
        reactorConfig = config
        for reactor in reactors { reactor.commands.post(.configure(config)) }
        logger.info("SIGHUP: certificate reloaded", metadata: ["certfile": "\(current.options.certfile)"])
    }

    // MARK: peers

    /// Takes the connections whose handshake ended (on a handshake thread) as peers.
    private func adoptHandshakes() {
        for outcome in acceptor.takeResults() {
            switch outcome {
            case .failed(let e) where e == ETIMEDOUT:
                // A port scanner, a health check, or a peer that stalls on purpose.
                counters.distHandshakeTimeouts.add(1, ordering: .relaxed)
                logger.debug("Distribution handshake timed out")
            case .failed(let e):
                // A wrong cookie, something that is not an Erlang node, or a peer that hung up.
                counters.distHandshakesFailed.add(1, ordering: .relaxed)
                logger.warning("Refused a distribution connection (wrong cookie or failed handshake)",
                               metadata: ["reason": "\(ErrnoName.erlang(e))"])
            case .connected(let fd, let name):
                counters.distHandshakes.add(1, ordering: .relaxed)
                guard shutdown == nil, let index = names.intern(name) else {
                    _ = ei_close_connection(fd)
                    continue
                }
                if let old = peers.first(where: { $0.node == index }) {
                    dropPeer(fd: old.fd, reason: "replaced by a new connection")
                }
                peers.append(Peer(fd: fd, name: name, node: index, lastHeard: monotonicMillis()))
                logger.info("Erlang node connected", metadata: ["peer": "\(name)"])
            }
        }
    }

    private func dropPeer(fd: CInt, reason: String) {
        guard let i = peers.firstIndex(where: { $0.fd == fd }) else { return }
        let peer = peers.remove(at: i)
        // Its client bytes were dropped with it.
        toErlang.taken(peer.heldBytes - peer.offBudget)
        if peer.behind { backlog.set(peer.node, behind: false) }
        _ = ei_close_connection(fd)
        logger.info("Erlang node disconnected", metadata: ["peer": "\(peer.name)", "reason": "\(reason)"])
        // The smaller controller set reaches the reactors before the node-down: whatever they
        // announced to this node until then is closed by it, and nothing is announced to it after.
        let wasController = shutdown == nil && detachController(node: peer.node)
        for reactor in reactors { reactor.commands.post(.nodeDown(node: peer.node)) }
        if wasController {
            if controllers.isEmpty {
                logger.info("Controller node is gone: listeners closed until the next start", metadata: ["peer": "\(peer.name)"])
            } else {
                logger.info("Controller node is gone: its connections closed, the other controllers keep the listeners",
                            metadata: ["peer": "\(peer.name)", "controllers": "\(controllers.count)"])
            }
        }
    }

    /// Takes `node`'s controller off the list and gives the reactors the set without it; closes the
    /// listeners when it was the last. The caller closes that node's connections (`.nodeDown` or
    /// `.release`, posted after this so that the reactors see the new set first). False when `node`
    /// had no controller.
    private func detachController(node: UInt16) -> Bool {
        guard controllers.detach(node: node) != nil else { return false }
        proposals[node] = nil
        if var config = reactorConfig {
            config.controllers = controllerSet(balance: options.balance)
            reactorConfig = config
            for reactor in reactors { reactor.commands.post(.configure(config)) }
        }
        if controllers.isEmpty { closeListeners() }
        return true
    }

    private func controllerSet(balance: Balance) -> ControllerSet {
        ControllerSet(controllers: controllers.pids, balance: balance, sessions: sessions)
    }

    /// Drops every peer from which nothing at all has arrived for net_ticktime, as Erlang does: a live
    /// node sends something (at least a tick) every net_ticktime/4, so silence means it is dead or
    /// frozen, even while its kernel still takes our bytes. A peer whose input is waiting unread (this
    /// thread was busy, or was itself stopped) is not silent: it is read on the next turn.
    private func dropSilentPeers() {
        let now = monotonicMillis()
        for peer in peers where now - peer.lastHeard > netTicktimeMillis && !hasInput(peer.fd) {
            counters.netTickTimeouts.add(1, ordering: .relaxed)
            logger.warning("Nothing heard from an Erlang node for net_ticktime: dropping it",
                           metadata: ["peer": "\(peer.name)", "silent.ms": "\(now - peer.lastHeard)"])
            dropPeer(fd: peer.fd, reason: "net_tick_timeout")
        }
    }

    private func hasInput(_ fd: CInt) -> Bool {
        if CEI_input_ready(fd) != 0 { return true }
        return Poll.isReadable(fd)
    }

    /// Reads what `fd` has without waiting, then handles the whole messages buffered (at most 256, so
    /// that one busy peer cannot starve the others). Part of a message stays buffered until the rest
    /// arrives: a peer that stops inside a message holds nobody, and is dropped when silent for
    /// net_ticktime.
    private func receive(from fd: CInt) {
        guard let i = peers.firstIndex(where: { $0.fd == fd }) else { return }
        var received = 0
        let err = CEI_fill_input(fd, &received)
        if received > 0 { peers[i].lastHeard = monotonicMillis() }
        for _ in 0..<256 {
            guard CEI_input_ready(fd) != 0, receiveOne(from: fd) else { break }
        }
        // An error after whole messages: those were handled first (a peer's last words count).
        if err != 0 { dropPeer(fd: fd, reason: ErrnoName.erlang(err)) }
    }

    /// Handles the whole message at the head of the input buffer. Returns false when the peer was dropped.
    private func receiveOne(from fd: CInt) -> Bool {
        guard peers.contains(where: { $0.fd == fd }) else { return false }
        let message = messageHeader
        message.pointee.msgtype = -1
        // Reads only from the buffer (a whole message is there), so this never waits; a tick is
        // answered into the output buffer.
        let rc = ei_xreceive_msg(fd, message, &receiveBuffer)
        defer { trimReceiveBuffer() }
        switch rc {
        case CInt(CEI_ERL_TICK):
            return true
        case CInt(CEI_ERL_MSG):
            guard message.pointee.msgtype == CEI_ERL_SEND || message.pointee.msgtype == CEI_ERL_REG_SEND else { return true }
            let sender = message.pointee.msgtype == CEI_ERL_REG_SEND ? pidRef(message.pointee.from) : nil
            handle(UnsafeRawBufferPointer(start: receiveBuffer.buff, count: Int(receiveBuffer.index)), sender: sender)
            return peers.contains { $0.fd == fd }
        default:
            let e = CEI_erl_errno()
            if e == EIO && message.pointee.msgtype > 0 {
                // A control message ei does not know (e.g. a monitor) was read whole; the stream is intact.
                logger.debug("Ignored distribution control message", metadata: ["msgtype": "\(message.pointee.msgtype)"])
                return true
            }
            dropPeer(fd: fd, reason: ErrnoName.erlang(e))
            return false
        }
    }

    /// Sends what ei has written into the socket buffers since the last turn (replies, events, tick
    /// answers), as far as the kernel takes it now; the rest waits for POLLOUT. A peer with more than
    /// `outputLimit` bytes still waiting is not reading: it is dropped.
    private func flushPeers() {
        for peer in peers {
            if CEI_pending_output(peer.fd) > 0 {
                let err = CEI_flush(peer.fd)
                if err != 0 {
                    dropPeer(fd: peer.fd, reason: ErrnoName.erlang(err))
                    continue
                }
            }
            // Also when nothing was pending: a large message may have taken what was buffered before
            // it straight to the socket (sockets.c, cb_writev).
            releaseHeld(fd: peer.fd)
            let pending = CEI_pending_output(peer.fd)
            if pending > outputLimit {
                counters.distOutputOverflows.add(1, ordering: .relaxed)
                logger.warning("An Erlang node takes no output: dropping it",
                               metadata: ["peer": "\(peer.name)", "output.pending": "\(pending)",
                                          "output.limit": "\(outputLimit)"])
                dropPeer(fd: peer.fd, reason: "output_limit")
            }
        }
        let caughtUp = updateBacklog()
        if toErlang.shouldResume() || caughtUp {
            for reactor in reactors { reactor.commands.post(.resumeReads) }
        }
    }

    /// Client bytes one peer may have waiting in user space, while several controllers share the
    /// node, before the connections its node owns stop being read: a quarter of
    /// `--dist-queue-limit`, so that a frozen ejabberd node cannot take the whole budget from the
    /// others before net_ticktime drops it. Once marked, its bytes leave the shared budget (they
    /// stay bounded: its connections are not read, so at most what was read before the reactors
    /// saw the mark, itself bounded by the budget, is added), and the others' clients are read.
    private var peerHeldLimit: Int { Swift.max(toErlang.limit / 4, 1) }

    /// Marks peers behind (or caught up, at half the limit) in `backlog`. With one controller there is
    /// nobody to be fair to: the shared budget alone holds the clients back, as before. Returns true
    /// when a peer caught up, so that the reactors read what they left.
    private func updateBacklog() -> Bool {
        let shared = controllers.count > 1
        var caughtUp = false
        for i in peers.indices {
            let held = peers[i].heldBytes
            if !peers[i].behind && shared && held > peerHeldLimit {
                peers[i].behind = true
                backlog.set(peers[i].node, behind: true)
                toErlang.taken(held - peers[i].offBudget)
                peers[i].offBudget = held
                logger.warning("An Erlang node is behind on client bytes: its connections wait until it catches up",
                               metadata: ["peer": "\(peers[i].name)", "held.bytes": "\(held)"])
            } else if peers[i].behind && (!shared || held <= peerHeldLimit / 2) {
                peers[i].behind = false
                backlog.set(peers[i].node, behind: false)
                caughtUp = true
                logger.info("An Erlang node caught up on client bytes", metadata: ["peer": "\(peers[i].name)"])
            }
        }
        return caughtUp
    }

    /// Takes off `toErlang` the client bytes the kernel has taken for `fd`.
    private func releaseHeld(fd: CInt) {
        guard let i = peers.firstIndex(where: { $0.fd == fd }), !peers[i].held.isEmpty else { return }
        let sent = CEI_output_sent(fd)
        let done = peers[i].held.prefix { $0.end <= sent }
        guard !done.isEmpty else { return }
        let bytes = done.reduce(0) { $0 + $1.bytes }
        let off = Swift.min(bytes, peers[i].offBudget)
        peers[i].offBudget -= off
        toErlang.taken(bytes - off)
        peers[i].heldBytes -= bytes
        peers[i].held.removeFirst(done.count)
    }

    /// At shutdown: gives the peers up to a second to take what is still buffered (the replies).
    private func flushPeersBeforeClosing() {
        let deadline = monotonicMillis() + 1_000
        while true {
            flushPeers()
            var fds = peers.filter { CEI_pending_output($0.fd) > 0 }.map { pollfd(fd: $0.fd, events: Int16(POLLOUT), revents: 0) }
            let left = deadline - monotonicMillis()
            guard !fds.isEmpty, left > 0 else { return }
            _ = Poll.poll(&fds, timeout: CInt(left))
        }
    }

    /// ei_x_buff never shrinks: free one that a large message blew up.
    private func trimReceiveBuffer() {
        if receiveBuffer.buffsz > 1 << 20 {
            ei_x_free(&receiveBuffer)
            ei_x_new(&receiveBuffer)
        }
    }

    private func pidRef(_ pid: erlang_pid) -> PidRef? {
        var pid = pid
        let node = String(cString: CEI_pid_node(&pid))
        return names.pidRef(DecodedPid(node: node, num: pid.num, serial: pid.serial, creation: pid.creation))
    }

    // MARK: requests

    private func handle(_ buffer: UnsafeRawBufferPointer, sender: PidRef?) {
        let request: Request
        do {
            request = try Request.decode(buffer, nodes: names, refs: refs,
                                         limits: RequestLimits(maxPutData: options.inputBufferLimit))
        } catch {
            if error.reason == .unknownConnection {
                // A ConnId of another node or of an earlier run: as unknown as a closed connection.
                counters.unknownConnection.add(1, ordering: .relaxed)
                if error.quiet { return }
            } else {
                counters.malformedRequests.add(1, ordering: .relaxed)
                logger.debug("Malformed request", metadata: ["reason": "\(error.reason)"])
            }
            if let to = error.replyTo ?? sender { send(to: to, .requestError(tag: error.tag, reason: error.reason)) }
            return
        }
        switch request {
        case .start(let from, let ref, let options):
            start(from: from, ref: ref, options: options)
        case .getData(let from, let id):
            guard let reactor = reactor(for: id) else {
                return send(to: from, .requestError(tag: .connID(id), reason: .unknownConnection))
            }
            reactor.commands.post(.getData(owner: from, connID: id))
        case .putData(let id, let bytes):
            guard let reactor = reactor(for: id) else {
                if let sender { send(to: sender, .requestError(tag: .connID(id), reason: .unknownConnection)) }
                return
            }
            toClients.added(bytes.count)
            reactor.commands.post(.putData(replyTo: sender, connID: id, bytes: bytes))
        case .sendData(let id, let bytes):
            guard let reactor = reactor(for: id) else {
                counters.unknownConnection.add(1, ordering: .relaxed)
                return
            }
            // Counted before the reactor can take it.
            toClients.added(bytes.count)
            reactor.commands.post(.sendData(connID: id, bytes: bytes))
        case .close(let id):
            post(.close(connID: id), for: id)
        case .credit(let id, let elements):
            post(.credit(connID: id, elements: elements), for: id)
        case .resetStream(let id):
            post(.resetStream(connID: id), for: id)
        case .shaper(let id, let rate):
            post(.shaper(connID: id, rate: rate.map { ($0.bytesPerSecond, $0.burst) }), for: id)
        case .shutdown(let from, let ref):
            if controllers.contains(node: from.node) && controllers.hasOthers(than: from.node) {
                // One controller of several leaves; the node serves the others and says so.
                leave(node: from.node)
                sendStats(to: from, tag: "megaphone_detached", ref: ref)
            } else {
                beginShutdown(waiter: (from, ref))
            }
        case .shutdownQuietly:
            beginShutdown(waiter: nil)
        case .stats(let from, let ref):
            sendStats(to: from, tag: "megaphone_stats", ref: ref)
        }
    }

    /// Posts a command of one of the requests that are never answered to the reactor that owns the
    /// connection; one no reactor owns is counted as `unknown_connection` and dropped.
    private func post(_ command: ReactorCommand, for id: UInt64) {
        guard let reactor = reactor(for: id) else {
            counters.unknownConnection.add(1, ordering: .relaxed)
            return
        }
        reactor.commands.post(command)
    }

    private func reactor(for connID: UInt64) -> Reactor? {
        let i = Reactor.reactorIndex(of: connID)
        return i < reactors.count ? reactors[i] : nil
    }

    /// `start`: opens the listeners asked for and keeps those already open; any failure leaves the
    /// previous configuration in place.
    ///
    /// With controllers of other nodes attached the configuration is theirs too: a `start` must ask
    /// for the same (`StartOptions.disagreements`) or is refused with `{config_mismatch, Names}`, and
    /// one with no listeners is its controller leaving (what mod_megaphone sends when the module
    /// stops). Alone, a controller reconfigures the node as it likes. An attached controller's
    /// refused configuration is remembered (`proposals`): the start that makes every attached
    /// controller ask for the same one applies it, and the others' retries then agree.
    private func start(from: PidRef, ref: [UInt8], options: StartOptions) {
        guard shutdown == nil else { return send(to: from, .requestError(tag: .ref(ref), reason: .shuttingDown)) }
        let controller = options.controller ?? from
        let shared = controllers.hasOthers(than: controller.node)
        if shared && options.listeners.isEmpty {
            leave(node: controller.node)
            return replyStarted(to: from, ref: ref, controller: controller)
        }
        var reconfiguring = false
        if shared {
            let differing = options.disagreements(with: self.options)
            if !differing.isEmpty {
                let attached = controllers.contains(node: controller.node)
                if attached { proposals[controller.node] = options }
                let agreed = attached && controllers.pids.allSatisfy { pid in
                    pid.node == controller.node
                        || proposals[pid.node].map { $0.disagreements(with: options).isEmpty } == true
                }
                guard agreed else {
                    logger.warning("Refused a start that asks for another configuration than the attached controllers'",
                                   metadata: ["controller.node": "\(names.name(of: controller.node) ?? "?")",
                                              "options": "\(differing)",
                                              "pending": "\(attached ? "until every attached controller asks for it" : "no")"])
                    return send(to: from, .requestError(tag: .ref(ref), reason: .configMismatch(differing)))
                }
                logger.notice("Every attached controller asked for the same new configuration: taking it",
                              metadata: ["options": "\(differing)", "controllers": "\(controllers.count)"])
                reconfiguring = true
            }
        }
        // The certificate is (re)loaded on every start: a repeated start is how an operator renews it.
        var tls: TLSContext? = nil
        if let certfile = options.certfile {
            do {
                tls = try TLSContext(TLSOptions(certfile: certfile, ciphers: options.ciphers ?? TLSOptions.defaultCiphers,
                                                minVersionTLS13: options.tlsMinVersion13))
                counters.certificateLoads.add(1, ordering: .relaxed)
            } catch {
                counters.certificateLoadFailures.add(1, ordering: .relaxed)
                logger.warning("Cannot load the TLS certificate", metadata: ["certfile": "\(certfile)", "error": "\(error)"])
                return send(to: from, .requestError(tag: .ref(ref), reason: .badCertfile(error.description)))
            }
        } else if options.listeners.contains(where: { $0.transport != .tcp }) {
            return send(to: from, .requestError(tag: .ref(ref), reason: .badopt("certfile")))
        }
        var change = ListenerSet.Change(added: [], removed: [])
        do {
            // Shared: the same listeners, already open (port-0 ones stay on the ports they got).
            if !shared || reconfiguring { change = try listeners.replace(with: options.listeners) }
        } catch {
            logger.warning("Cannot listen", metadata: ["listener": "\(error.spec)", "error": "\(error.error)"])
            return send(to: from, .requestError(tag: .ref(ref), reason: .listenFailed(error.spec, errno: error.error.erlangName)))
        }
        controllers.attach(controller)
        proposals.removeAll()
        let config = ReactorConfig(controllers: controllerSet(balance: options.balance), options: options, tls: tls)
        for reactor in reactors {
            reactor.commands.post(.configure(config))
            for listener in change.removed { reactor.commands.post(.removeListener(listener)) }
            for listener in change.added { reactor.commands.post(.addListener(listener)) }
        }
        self.options = options
        reactorConfig = config
        logger.info("Started", metadata: ["listeners": "\(listeners.bound(options.listeners).map(\.description))",
                                          "controller.node": "\(names.name(of: controller.node) ?? "?")",
                                          "controllers": "\(controllers.count)"])
        replyStarted(to: from, ref: ref, controller: controller)
    }

    /// One controller of several leaves while its node stays up: new connections go to the others,
    /// and the connections its node owns are flushed and closed, their owners told `tcp_closed`.
    private func leave(node: UInt16) {
        guard detachController(node: node) else { return }
        for reactor in reactors { reactor.commands.post(.release(node: node)) }
        logger.info("Controller left: its connections closed, the other controllers keep the listeners",
                    metadata: ["controller.node": "\(names.name(of: node) ?? "?")", "controllers": "\(controllers.count)"])
    }

    private func replyStarted(to from: PidRef, ref: [UInt8], controller: PidRef) {
        let info = StartInfo(node: node.nodeName, listeners: listeners.bound(options.listeners), options: options,
                             controller: controller, controllerNode: names.name(of: controller.node))
        send(to: from) { e in
            e.tuple(3)
            e.atom("megaphone_started")
            e.raw(ref)
            info.encode(into: e)
        }
    }

    private func closeListeners() {
        for listener in listeners.closeAll() {
            for reactor in reactors { reactor.commands.post(.removeListener(listener)) }
        }
    }

    /// `{Tag, Ref, #{...}}` with the counters.
    private func sendStats(to pid: PidRef, tag: String, ref: [UInt8]) {
        let stats = StatsReport(
            node: node.nodeName, listeners: listeners.bound(options.listeners),
            values: counters.snapshot() + [
                ("dist_queue_bytes", toErlang.queuedBytes),
                ("dist_queue_peak", toErlang.peakBytes),
                ("reads_paused", toErlang.pausedReadCount),
                ("request_queue_bytes", toClients.queuedBytes),
                ("request_queue_peak", toClients.peakBytes),
                ("request_reads_paused", toClients.pausedReadCount),
                ("nodes_behind", backlog.count),
            ],
            closed: CloseReason.allCases.map { ($0.name, counters.closedCount($0)) },
            byTransport: Transport.allCases.map { ($0.rawValue, counters.connections(via: $0)) },
            controllerNodes: zip(controllers.pids.map { names.name(of: $0.node) ?? "" },
                                 sessions.counts(of: controllers.pids.map(\.node))).map { ($0, $1) })
        send(to: pid) { e in
            e.tuple(3)
            e.atom(tag)
            e.raw(ref)
            stats.encode(into: e)
        }
    }

    // MARK: shutdown

    private func beginShutdown(waiter: (pid: PidRef, ref: [UInt8])?) {
        if shutdown != nil {
            if let waiter { shutdown?.waiters.append(waiter) }
            return
        }
        logger.info("Shutting down: closing listeners and draining connections")
        shutdown = Shutdown(waiters: waiter.map { [$0] } ?? [], drained: [], deadline: monotonicMillis() + 15_000)
        closeListeners()
        node.unpublish()
        for reactor in reactors { reactor.commands.post(.shutdown) }
    }

    private func finishShutdown() {
        // Whatever the reactors reported last (tcp_closed to the owners) goes out before the reply.
        handleReactorOutput(finishing: true)
        for waiter in shutdown?.waiters ?? [] {
            sendStats(to: waiter.pid, tag: "megaphone_stopped", ref: waiter.ref)
        }
        flushPeersBeforeClosing()
        for peer in peers { _ = ei_close_connection(peer.fd) }
        peers = []
        running = false
        logger.info("Stopped")
    }

    // MARK: output

    private func handleReactorOutput(finishing: Bool = false) {
        for item in output.takeAll() {
            switch item {
            case .send(let to, let event):
                let fd = deliver(to: to, event)
                let bytes = event.clientBytes
                if bytes > 0 { hold(bytes, for: fd) }
            case .clientInput(let readAt, let count):
                sentInputs.append((readAt, count))
            case .drained(let index):
                guard !finishing, shutdown != nil else { continue }
                shutdown?.drained.insert(index)
                if shutdown?.drained.count == reactors.count { finishShutdown() }
            }
        }
        if toErlang.shouldResume() {
            for reactor in reactors { reactor.commands.post(.resumeReads) }
        }
    }

    /// Client input that this turn encoded and handed to the peers' sockets: its read-to-send time.
    private func timeSentInputs() {
        guard !sentInputs.isEmpty else { return }
        let now = monotonicNanos()
        for (readAt, count) in sentInputs { counters.readToSend.observe(nanos: now - readAt, count: count) }
        sentInputs.removeAll(keepingCapacity: true)
    }

    private func send(to pid: PidRef, _ event: Event) {
        _ = deliver(to: pid, event)
    }

    private func send(to pid: PidRef, _ build: (TermEncoder) -> Void) {
        _ = deliver(to: pid, build)
    }

    /// Returns the fd the event was written to, nil when it was dropped.
    private func deliver(to pid: PidRef, _ event: Event) -> CInt? {
        let selfPid = self.selfPid
        let refs = self.refs
        return deliver(to: pid) { e in event.encode(into: e, refs: refs, selfPid: { $0.pid(selfPid) }) }
    }

    /// Encodes with `build` and writes it for `pid` to its node's link (buffered: `flushPeers` sends
    /// it); dropped (and counted) when that node is not connected. Returns the fd written to.
    private func deliver(to pid: PidRef, _ build: (TermEncoder) -> Void) -> CInt? {
        guard let i = peers.firstIndex(where: { $0.node == pid.node }), let nodeName = names.name(of: pid.node) else {
            counters.undeliverable.add(1, ordering: .relaxed)
            return nil
        }
        encoder.reset()
        build(encoder)
        var to = erlang_pid()
        CEI_pid_set(&to, nodeName, pid.num, pid.serial, pid.creation)
        let fd = peers[i].fd
        // Never waits: the socket callbacks buffer what the kernel does not take.
        let rc = encoder.withBuffer { ei_send(fd, &to, $0, $1) }
        if rc < 0 {
            dropPeer(fd: fd, reason: ErrnoName.erlang(CEI_erl_errno()))
            return nil
        }
        return fd
    }

    /// Client bytes just written for `fd` (nil: dropped) stay on `toErlang` until the kernel took them.
    private func hold(_ bytes: Int, for fd: CInt?) {
        guard let fd, let i = peers.firstIndex(where: { $0.fd == fd }) else {
            toErlang.taken(bytes)
            return
        }
        let end = CEI_output_written(fd)
        if CEI_output_sent(fd) >= end && peers[i].held.isEmpty {
            toErlang.taken(bytes)
        } else {
            peers[i].held.append((end: end, bytes: bytes))
            peers[i].heldBytes += bytes
            if peers[i].behind {
                // Read before the reactors saw the mark: off the shared budget too.
                toErlang.taken(bytes)
                peers[i].offBudget += bytes
            }
        }
    }
}
