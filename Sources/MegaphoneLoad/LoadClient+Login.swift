import MegaphoneCore

#if canImport(Glibc)
import Glibc
#endif

/// The `login` command's run: every user of the process once, at most `--concurrency` at a time.
final class LoginRun {
    let started: Double
    /// The next slot to start.
    var next = 0
    /// Slots logging in, with their deadline (`--login-timeout` from the start of the connect).
    var inFlight: [Int: Double] = [:]
    var nextProgress: Double
    /// When the deadlines are looked at next.
    var nextSweep: Double
    /// `login-done` printed (or the run cancelled by `close`): no more progress lines.
    var finished = false

    init(started: Double, progressSeconds: Double, concurrency: Int) {
        self.started = started
        nextProgress = started + progressSeconds
        nextSweep = started + LoginRun.sweepSeconds
        inFlight.reserveCapacity(concurrency)
    }

    /// How often deadlines are checked: a timeout is late by at most this much.
    static let sweepSeconds = 0.25
}

extension LoadClient {
    /// Starts the login run: the session table is allocated here, so that the memory it takes shows
    /// between the `rss_kb` before `login` and the one after.
    func beginLogin() {
        guard login == nil else {
            control.emit(ControlLine.error("login-already-started", "login"))
            return
        }
        let base = UnsafeMutablePointer<Session>.allocate(capacity: config.count)
        base.initialize(repeating: Session(), count: config.count)
        sessions = UnsafeMutableBufferPointer(start: base, count: config.count)
        login = LoginRun(started: MonotonicClock.now(), progressSeconds: config.progressSeconds,
                         concurrency: config.concurrency)
        logger.info("Logging in", metadata: ["users": "\(config.count)", "first": "\(config.first)"])
    }

    func tickLogin(_ now: Double) {
        guard let run = login, !run.finished else { return }
        if now >= run.nextSweep {
            run.nextSweep = now + LoginRun.sweepSeconds
            let expired = run.inFlight.filter { $0.value <= now }.map(\.key)
            for s in expired.sorted() {
                end(s, reason: sessions[s].state == .connecting ? "connect-timeout" : "timeout")
            }
        }
        while run.inFlight.count < config.concurrency && run.next < sessions.count {
            let s = run.next
            run.next += 1
            startLogin(s, now: now)
        }
        if now >= run.nextProgress {
            emitProgress(run, now: now)
            while run.nextProgress <= now { run.nextProgress += config.progressSeconds }
        }
        if run.next >= sessions.count && run.inFlight.isEmpty {
            finishLogin(run, now: now)
        }
    }

    private func emitProgress(_ run: LoginRun, now: Double) {
        control.emit(ControlLine.progress(seconds: now - run.started, tally, inFlight: run.inFlight.count,
                                          rssKB: ProcessMemory.residentKilobytes()))
    }

    private func finishLogin(_ run: LoginRun, now: Double) {
        run.finished = true
        emitProgress(run, now: now)
        for (reason, count) in tally.failureReasons.sorted(by: { $0.key < $1.key }) {
            control.emit(ControlLine.failure(reason: reason, count: count))
        }
        control.emit(ControlLine.loginDone(tally, seconds: now - run.started))
        logger.info("Logins done", metadata: ["logged_in": "\(tally.loggedIn)", "failed": "\(tally.failed)"])
    }

    /// Opens slot `s`'s socket and starts its connect. A failure before the connect is under way
    /// counts at once (the slot never was in flight).
    private func startLogin(_ s: Int, now: Double) {
        let fd: CInt
        do {
            fd = try Socket.openClient(to: config.server, from: config.source)
        } catch {
            sessions[s].state = .failed
            tally.countFailure("\(error.call)-\(error.erlangName)")
            return
        }
        sessions[s].fd = fd
        sessions[s].state = .connecting
        login?.inFlight[s] = now + config.loginTimeoutSeconds
        do {
            try Epoll.add(epfd: epfd, fd: fd, events: Self.sessionEvents, data: UInt64(s))
            if try Socket.connect(fd, to: config.server) { connected(s) }
        } catch {
            end(s, reason: Self.connectReason(error.errno))
        }
    }

    /// epoll reported the connect done: how it went is the socket's pending error.
    func finishConnect(_ s: Int) {
        let err = Socket.pendingError(sessions[s].fd)
        if err != 0 {
            end(s, reason: Self.connectReason(err))
        } else {
            connected(s)
        }
    }

    private func connected(_ s: Int) {
        react(s, machine.opening())
    }

    /// A login left the in-flight table (logged in or failed); `tickLogin` starts the next.
    func loginEnded(_ s: Int) {
        login?.inFlight.removeValue(forKey: s)
    }

    static func connectReason(_ errno: CInt) -> String {
        switch errno {
        case ECONNREFUSED: return "connect-refused"
        case ETIMEDOUT: return "connect-timeout"
        default: return "connect-\(ErrnoName.erlang(errno))"
        }
    }
}
