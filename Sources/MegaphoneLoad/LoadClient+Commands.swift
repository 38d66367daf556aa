import MegaphoneCore

/// The control channel's commands (README, "megaphone-load").
extension LoadClient {
    /// Reads what the control input has and runs each complete line.
    func readControl() {
        for input in control.read() {
            switch input {
            case .line(let line):
                run(ControlCommand.parse(line))
            case .tooLong:
                control.emit(ControlLine.error("line-too-long", "-"))
            case .end:
                controlEnded = true
                if controlPollable { Epoll.delete(epfd: epfd, fd: control.input) }
                logger.info("End of input: closing every session")
                closeAll(reporting: sessions.contains { $0.state.isOpen })
                running = false
            }
        }
    }

    func run(_ command: ControlCommand) {
        switch command {
        case .login:
            beginLogin()
        case .status:
            control.emit(ControlLine.status(tally, rssKB: ProcessMemory.residentKilobytes()))
            // Why sessions went down is not in the line protocol: the log has it, once per change.
            if tally.down != downLogged {
                downLogged = tally.down
                logger.notice("Sessions down", metadata: tally.downReasons.reduce(into: [:]) {
                    $0[$1.key] = "\($1.value)"
                })
            }
        case .send(let from, let to, let token):
            sendChat(from: from, to: to, token: token)
        case .ping(let inflight):
            beginPing(inflight: inflight)
        case .close:
            closeAll(reporting: true)
        case .blank:
            break
        case .unknown(let text):
            control.emit(ControlLine.error("unknown-command", text))
        case .badArguments(let text):
            control.emit(ControlLine.error("bad-arguments", text))
        }
    }

    private func sendChat(from: Int, to: Int, token: String) {
        let s = from - config.first
        guard s >= 0 && s < sessions.count else {
            control.emit(ControlLine.sendFailed(from: from, token: token, reason: "not-local"))
            return
        }
        guard sessions[s].state.isLive else {
            control.emit(ControlLine.sendFailed(from: from, token: token, reason: "not-live"))
            return
        }
        write(s, Stanzas.chat(to: machine.accounts.fullJID(to), body: Array(token.utf8)))
    }

    /// Every open session sends `</stream:stream>` (once its stream is open) and is closed with a
    /// reset; a login run still going stops, a ping run ends. Prints `closed n=N` (N: the sessions
    /// closed, logins in flight included) when `reporting`.
    func closeAll(reporting: Bool) {
        var closed = 0
        for s in sessions.indices where sessions[s].state.isOpen {
            let state = sessions[s].state
            if state != .connecting && sessions[s].output.isEmpty {
                _ = Stanzas.streamEnd.withUnsafeBytes { try? Socket.write(sessions[s].fd, $0) }
            }
            Socket.setResetOnClose(sessions[s].fd)
            release(s)
            sessions[s].state = .closed
            if state.isLive { tally.live -= 1 }
            closed += 1
        }
        if let run = login, !run.finished {
            run.finished = true
            run.inFlight.removeAll()
            run.next = sessions.count
        }
        if let run = ping { finishPing(run, now: MonotonicClock.now()) }
        if reporting { control.emit(ControlLine.closed(closed)) }
        logger.info("Closed", metadata: ["sessions": "\(closed)"])
    }
}
