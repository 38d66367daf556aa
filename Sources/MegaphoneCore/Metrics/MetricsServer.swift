import Logging

#if canImport(Glibc)
import Glibc
#endif

/// Serves `GET /metrics` on a listening socket of its own, from a thread of its own.
///
/// Whoever reaches this port is not trusted more than a client: a scraper that sends nothing, drips
/// bytes, sends garbage or never reads the answer must not hold the node. So nothing here is shared
/// with the reactors or the distribution thread except the atomics `body` reads: one pthread polls
/// the listening socket and its scrapers, every socket is non-blocking, a request head is at most
/// `maxRequestBytes`, each connection has `deadlineMillis` from its accept to its close, at most
/// `maxClients` are served at once (more get a 503 and are closed), and every answer says
/// `Connection: close`. The port is its own, bound to the `--metrics-listen` address: the clients'
/// listeners never lead here.
public final class MetricsServer: Sendable {
    public struct Limits: Sendable {
        /// The largest request head taken; a longer one gets 431.
        public var maxRequestBytes: Int
        /// From accept to close, whatever the connection does meanwhile.
        public var deadlineMillis: Int64
        /// Connections served at once.
        public var maxClients: Int

        public init(maxRequestBytes: Int = 8 << 10, deadlineMillis: Int64 = 5_000, maxClients: Int = 8) {
            self.maxRequestBytes = maxRequestBytes
            self.deadlineMillis = deadlineMillis
            self.maxClients = maxClients
        }
    }

    /// What is bound (the real port when 0 was asked for).
    public let address: SocketAddress
    private let listenFD: CInt
    private let stopSignal: EventFD
    private let limits: Limits
    private let body: @Sendable () -> String
    private let logger: Logger
    private let thread = Locked<pthread_t?>(nil)

    /// Binds and listens on `address` (the caller learns a bind failure here, before anything runs).
    /// `body` renders the exposition text; it runs on the metrics thread for each scrape.
    public init(address: SocketAddress, limits: Limits = Limits(), logger: Logger,
                body: @escaping @Sendable () -> String) throws(SystemError) {
        listenFD = try Socket.listen(on: address, backlog: 16)
        do throws(SystemError) {
            stopSignal = try EventFD()
        } catch {
            closeFD(listenFD)
            throw error
        }
        self.address = Socket.localAddress(listenFD) ?? address
        self.limits = limits
        self.body = body
        self.logger = logger
    }

    deinit { closeFD(listenFD) }

    /// Starts the metrics thread.
    public func start() throws(SystemError) {
        let handle = try PThread.spawn(name: "metrics") { [self] in run() }
        thread.withLock { $0 = handle }
        logger.info("Serving metrics", metadata: ["metrics.address": "\(address)"])
    }

    /// Stops the thread and waits for it; open scrapes are closed.
    public func stop() {
        guard let handle = thread.withLock({ t -> pthread_t? in defer { t = nil }; return t }) else { return }
        stopSignal.signal()
        PThread.join(handle)
    }

    // MARK: the metrics thread

    private enum Phase {
        case reading
        /// Writing `output` from `written` on.
        case writing
        /// Answer sent and write side shut: reading what the client still sends until its EOF, so
        /// that closing with unread bytes does not reset the connection and lose the answer.
        case draining
    }

    private struct Scraper {
        var fd: CInt
        var deadline: Int64
        var phase: Phase = .reading
        var input: [UInt8] = []
        var output: [UInt8] = []
        var written = 0
        /// Accepted past `maxClients`, only to be told 503.
        var refused = false
        var done = false
    }

    private func run() {
        var scrapers: [Scraper] = []
        var scratch = [UInt8](repeating: 0, count: limits.maxRequestBytes + 1)
        var acceptPausedUntil: Int64 = 0
        while true {
            let now = monotonicMillis()
            var fds = [
                pollfd(fd: stopSignal.fd, events: Int16(POLLIN), revents: 0),
                pollfd(fd: now >= acceptPausedUntil ? listenFD : -1, events: Int16(POLLIN), revents: 0),
            ]
            for s in scrapers {
                fds.append(pollfd(fd: s.fd, events: Int16(s.phase == .writing ? POLLOUT : POLLIN), revents: 0))
            }
            var wake = scrapers.map(\.deadline).min()
            if acceptPausedUntil > now { wake = min(wake ?? acceptPausedUntil, acceptPausedUntil) }
            let timeout = wake.map { CInt(clamping: max(0, $0 - now)) } ?? -1
            do {
                _ = try syscall("poll") { poll(&fds, nfds_t(fds.count), timeout) }
            } catch {
                logger.error("Metrics endpoint stopped: poll failed", metadata: ["error": "\(error)"])
                break
            }
            if fds[0].revents != 0 { break }
            for i in scrapers.indices where fds[i + 2].revents != 0 {
                serve(&scrapers[i], revents: fds[i + 2].revents, scratch: &scratch)
            }
            let after = monotonicMillis()
            for i in scrapers.indices where !scrapers[i].done && scrapers[i].deadline <= after {
                logger.debug("Metrics scraper closed at its deadline", metadata: ["metrics.phase": "\(scrapers[i].phase)"])
                scrapers[i].done = true
            }
            for s in scrapers where s.done { closeFD(s.fd) }
            scrapers.removeAll(where: \.done)
            if fds[1].revents != 0 { acceptPausedUntil = accept(into: &scrapers, now: after) }
        }
        for s in scrapers { closeFD(s.fd) }
    }

    /// Accepts what waits; returns when accepting may go on (0: now; later after EMFILE, so that a full
    /// fd table does not make the loop spin on a listening socket that stays readable).
    private func accept(into scrapers: inout [Scraper], now: Int64) -> Int64 {
        while true {
            let fd: CInt
            do {
                switch try Socket.accept(listenFD) {
                case .processed(let accepted): fd = accepted
                case .wouldBlock: return 0
                }
            } catch {
                if error.errno == EMFILE || error.errno == ENFILE {
                    logger.warning("Metrics endpoint out of file descriptors", metadata: ["error": "\(error)"])
                    return now + 100
                }
                // ECONNABORTED and the like: that connection is gone, the next may be fine.
                continue
            }
            let serving = scrapers.count(where: { !$0.refused })
            if serving < limits.maxClients {
                scrapers.append(Scraper(fd: fd, deadline: now + limits.deadlineMillis))
            } else if scrapers.count < 2 * limits.maxClients {
                // Told why at once, with a short linger; past twice the bound not even that.
                var s = Scraper(fd: fd, deadline: now + min(1_000, limits.deadlineMillis), refused: true)
                s.output = HTTPStatus.unavailable.response()
                s.phase = .writing
                scrapers.append(s)
                logger.debug("Metrics scraper refused: too many at once", metadata: ["metrics.max": "\(limits.maxClients)"])
            } else {
                closeFD(fd)
            }
        }
    }

    private func serve(_ s: inout Scraper, revents: Int16, scratch: inout [UInt8]) {
        switch s.phase {
        case .reading:
            let room = limits.maxRequestBytes + 1 - s.input.count
            let n: Int
            switch read(s.fd, into: &scratch, max: room) {
            case .bytes(let count): n = count
            case .nothing: return
            case .closed:
                // Gone before a whole request: nobody to answer.
                s.done = true
                return
            }
            s.input += scratch[0..<n]
            let verdict = MetricsRequest.judge(s.input, maxSize: limits.maxRequestBytes)
            switch verdict {
            case .incomplete:
                return
            case .metrics:
                s.output = HTTPStatus.ok.response(contentType: PrometheusText.contentType, body: body())
            case .error(let status):
                logger.debug("Metrics request refused", metadata: ["http.status": "\(status.rawValue)"])
                s.output = status.response()
            }
            s.input = []
            s.phase = .writing
            write(&s)
        case .writing:
            if revents & Int16(POLLERR | POLLHUP) != 0 && revents & Int16(POLLOUT) == 0 {
                s.done = true
                return
            }
            write(&s)
        case .draining:
            if case .closed = read(s.fd, into: &scratch, max: scratch.count) { s.done = true }
        }
    }

    private func write(_ s: inout Scraper) {
        while s.written < s.output.count {
            let result = s.output.withUnsafeBytes { raw in
                Result { () throws(SystemError) in try Socket.write(s.fd, UnsafeRawBufferPointer(rebasing: raw[s.written...])) }
            }
            switch result {
            case .success(.processed(let n)): s.written += n
            case .success(.wouldBlock): return
            case .failure:
                s.done = true
                return
            }
        }
        s.output = []
        try? Socket.shutdownWrite(s.fd)
        s.phase = .draining
    }

    private enum ReadOutcome {
        case bytes(Int)
        /// Readable, yet nothing to take (a spurious wake-up): not an EOF.
        case nothing
        /// EOF or an error: the connection is over.
        case closed
    }

    /// At most `max` bytes into `scratch`.
    private func read(_ fd: CInt, into scratch: inout [UInt8], max: Int) -> ReadOutcome {
        let result = scratch.withUnsafeMutableBytes { raw in
            Result { () throws(SystemError) in
                try Socket.read(fd, into: UnsafeMutableRawBufferPointer(rebasing: raw[0..<min(max, raw.count)]))
            }
        }
        switch result {
        case .success(.processed(let n)): return n == 0 ? .closed : .bytes(n)
        case .success(.wouldBlock): return .nothing
        case .failure: return .closed
        }
    }
}
