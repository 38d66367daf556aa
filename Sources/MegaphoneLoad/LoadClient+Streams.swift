import MegaphoneCore
import MegaphoneXML

#if canImport(Glibc)
import Glibc
#endif

/// A session's bytes: reading into the shared buffer, the parser, the machine's reactions, writes.
extension LoadClient {
    /// Reads until the socket has nothing more (edge-triggered), feeding each read to the parser.
    func readAll(_ s: Int) {
        while sessions[s].state.isOpen {
            let result: IOResult<Int>
            do {
                result = try Socket.read(sessions[s].fd, into: readBuffer)
            } catch {
                end(s, reason: Self.socketReason(error.errno))
                return
            }
            switch result {
            case .wouldBlock:
                return
            case .processed(0):
                end(s, reason: "closed")
                return
            case .processed(let n):
                feed(s, count: n)
            }
        }
    }

    /// The first `count` bytes of the read buffer through session `s`'s parser, event by event.
    private func feed(_ s: Int, count: Int) {
        var offset = 0
        let pingID = ping?.id ?? []
        while sessions[s].state.isOpen {
            let bytes = UnsafeRawBufferPointer(rebasing: readBuffer[offset..<count])
            let (consumed, event) = sessions[s].parser.feed(bytes, limits: limits)
            offset += consumed
            guard let event else { return }
            react(s, machine.handle(event, in: sessions[s].state, user: config.first + s, pingID: pingID))
        }
    }

    /// Carries out what the machine decided for session `s`.
    func react(_ s: Int, _ reaction: SessionMachine.Reaction) {
        if case .ended(let reason)? = reaction.report {
            end(s, reason: reason)
            return
        }
        sessions[s].state = reaction.state
        if reaction.restartStream { sessions[s].parser.reset() }
        if !reaction.send.isEmpty {
            write(s, reaction.send)
            guard sessions[s].state.isOpen else { return }
        }
        switch reaction.report {
        case .loggedIn?:
            tally.loggedIn += 1
            tally.live += 1
            loginEnded(s)
        case .chat(let from, let body)?:
            let sender = machine.accounts.index(of: from).map(String.init)
                ?? ControlLine.word(Array(Accounts.localpart(of: from)))
            control.emit(ControlLine.got(to: config.first + s, from: sender, token: body))
        case .answeredPing?:
            tally.pingsAnswered += 1
        case .pingResult(let ok)?:
            pingEnded(s, ok: ok)
        case .ended?, nil:
            break
        }
    }

    /// Writes `bytes` for session `s`, or queues them behind what is already waiting. What the
    /// socket does not take waits in the slot until epoll says it is writable.
    func write(_ s: Int, _ bytes: [UInt8]) {
        if !sessions[s].output.isEmpty {
            sessions[s].output += bytes
            if sessions[s].output.count > config.outputLimit { end(s, reason: "send-queue-full") }
            return
        }
        switch send(sessions[s].fd, bytes) {
        case .sent(let n) where n == bytes.count:
            break
        case .sent(let n):
            sessions[s].output = Array(bytes[n...])
        case .wouldBlock:
            sessions[s].output = bytes
        case .failed(let errno):
            end(s, reason: Self.socketReason(errno))
        }
    }

    /// Writes what waits in session `s`'s output.
    func flush(_ s: Int) {
        guard !sessions[s].output.isEmpty else { return }
        switch send(sessions[s].fd, sessions[s].output) {
        case .sent(let n) where n == sessions[s].output.count:
            // Assigned, not emptied in place: the buffer's memory goes back with it.
            sessions[s].output = []
        case .sent(let n):
            sessions[s].output.removeFirst(n)
        case .wouldBlock:
            break
        case .failed(let errno):
            end(s, reason: Self.socketReason(errno))
        }
    }

    enum SendOutcome {
        case sent(Int)
        case wouldBlock
        case failed(CInt)
    }

    private func send(_ fd: CInt, _ bytes: [UInt8]) -> SendOutcome {
        bytes.withUnsafeBytes { raw in
            do throws(SystemError) {
                switch try Socket.write(fd, raw) {
                case .processed(let n): return .sent(n)
                case .wouldBlock: return .wouldBlock
                }
            } catch {
                return .failed(error.errno)
            }
        }
    }

    /// Ends session `s`: a failed login while logging in, a session down once logged in. The socket
    /// is closed and everything the slot held is given back.
    func end(_ s: Int, reason: String) {
        let state = sessions[s].state
        guard state.isOpen else { return }
        release(s)
        if state.isLoggingIn {
            sessions[s].state = .failed
            tally.countFailure(reason)
            loginEnded(s)
            logger.debug("Login failed", metadata: ["user": "\(config.first + s)", "reason": "\(reason)"])
        } else {
            sessions[s].state = .down
            tally.countDown(reason)
            if state == .pinging { pingEnded(s, ok: false) }
            logger.debug("Session down", metadata: ["user": "\(config.first + s)", "reason": "\(reason)"])
        }
    }

    /// Closes the socket (which also takes it out of epoll) and frees the slot's buffers.
    func release(_ s: Int) {
        if sessions[s].fd >= 0 { closeFD(sessions[s].fd) }
        sessions[s].fd = -1
        sessions[s].output = []
        sessions[s].parser = XMLStreamParser()
    }

    static func socketReason(_ errno: CInt) -> String {
        errno == ECONNRESET ? "reset" : "socket-\(ErrnoName.erlang(errno))"
    }
}
