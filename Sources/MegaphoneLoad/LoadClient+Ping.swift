import MegaphoneCore

/// The `ping` command's run: each live session sends one XEP-0199 ping to the server and waits for
/// its answer, at most `limit` waiting at a time (a sliding window over the sessions in index order).
final class PingRun {
    let started: Double
    let limit: Int
    /// The iq id every ping of this run carries (one ping per session, so one id per run).
    let id: [UInt8]
    var next = 0
    /// Slots waiting for their answer, with their deadline.
    var outstanding: [Int: Double] = [:]
    var nextSweep: Double
    var ok = 0
    var failed = 0

    init(started: Double, limit: Int, id: [UInt8]) {
        self.started = started
        self.limit = limit
        self.id = id
        nextSweep = started + LoginRun.sweepSeconds
    }
}

extension LoadClient {
    func beginPing(inflight: Int) {
        guard ping == nil else {
            control.emit(ControlLine.error("ping-in-progress", "ping \(inflight)"))
            return
        }
        pingRuns += 1
        ping = PingRun(started: MonotonicClock.now(), limit: inflight, id: Array("mlp\(pingRuns)".utf8))
    }

    func tickPing(_ now: Double) {
        guard let run = ping else { return }
        if now >= run.nextSweep {
            run.nextSweep = now + LoginRun.sweepSeconds
            for s in run.outstanding.filter({ $0.value <= now }).map(\.key).sorted() {
                if sessions[s].state == .pinging { sessions[s].state = .live }
                pingEnded(s, ok: false)
            }
        }
        while run.outstanding.count < run.limit && run.next < sessions.count {
            let s = run.next
            run.next += 1
            guard sessions[s].state == .live else { continue }
            sessions[s].state = .pinging
            run.outstanding[s] = now + config.pingTimeoutSeconds
            write(s, Stanzas.ping(domain: machine.accounts.domain, id: run.id))
        }
        if run.next >= sessions.count && run.outstanding.isEmpty {
            finishPing(run, now: now)
        }
    }

    /// Session `s`'s ping got its answer (`ok`: a result), or failed (an error reply, the session
    /// went down, or its deadline passed).
    func pingEnded(_ s: Int, ok: Bool) {
        guard let run = ping, run.outstanding.removeValue(forKey: s) != nil else { return }
        if ok { run.ok += 1 } else { run.failed += 1 }
    }

    /// Prints `ping-done`; what is still outstanding (a `close` during the run) counts as failed.
    func finishPing(_ run: PingRun, now: Double) {
        run.failed += run.outstanding.count
        run.outstanding.removeAll()
        ping = nil
        control.emit(ControlLine.pingDone(ok: run.ok, failed: run.failed, seconds: now - run.started))
    }
}
