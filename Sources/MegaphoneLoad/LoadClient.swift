import CLinux
import Logging
import MegaphoneCore
import MegaphoneXML

#if canImport(Glibc)
import Glibc
#endif

/// megaphone-load's loop: one thread, one epoll, every session of the process, and the control
/// channel (commands on stdin, events on stdout; README, "megaphone-load").
///
/// Memory per session is its `Session` slot (a flat table, allocated at `login`); a session's
/// socket is edge-triggered and read into one buffer shared by all of them. Logins in flight and
/// pings waiting for their answer have small tables of their own, bounded by `--concurrency` and
/// the `ping` command's in-flight limit.
///
/// Not thread-safe: create it on the thread that calls `run()`.
public final class LoadClient {
    let config: LoadConfiguration
    let logger: Logger
    let machine: SessionMachine
    let limits: XMLStreamLimits
    let epfd: CInt
    var control: ControlChannel
    /// False when the input is a regular file, which epoll refuses: it is read every turn instead.
    let controlPollable: Bool
    var controlEnded = false
    var sessions: UnsafeMutableBufferPointer<Session>
    let readBuffer: UnsafeMutableRawBufferPointer
    var tally = Tally()
    var login: LoginRun?
    var ping: PingRun?
    var pingRuns = 0
    /// `tally.down` when the reasons were last logged.
    var downLogged = 0
    var running = true

    /// epoll user data of the control input; a session's is its slot index.
    static let controlToken = UInt64.max
    static let sessionEvents = Epoll.in | Epoll.out | Epoll.rdhup | Epoll.edgeTriggered

    /// A loop that reads commands from `input` and writes events to `output` (both stay open: the
    /// caller owns them).
    public init(configuration: LoadConfiguration, logger: Logger, input: CInt = 0, output: CInt = 1)
        throws(SystemError)
    {
        config = configuration
        self.logger = logger
        machine = SessionMachine(accounts: Accounts(
            userPrefix: configuration.userPrefix, passwordPrefix: configuration.passwordPrefix,
            domain: configuration.domain, resource: configuration.resource))
        limits = XMLStreamLimits(maxStanzaSize: configuration.maxStanzaSize)
        control = ControlChannel(input: input, output: output)
        epfd = try Epoll.epoll_create()
        var pollable = true
        do {
            try Epoll.add(epfd: epfd, fd: input, events: Epoll.in, data: Self.controlToken)
        } catch where error.errno == EPERM {
            pollable = false
        } catch {
            closeFD(epfd)
            throw error
        }
        controlPollable = pollable
        sessions = UnsafeMutableBufferPointer(start: nil, count: 0)
        readBuffer = .allocate(byteCount: max(1, configuration.readBufferSize), alignment: 16)
    }

    deinit {
        for s in sessions.indices where sessions[s].fd >= 0 { closeFD(sessions[s].fd) }
        if let base = sessions.baseAddress {
            base.deinitialize(count: sessions.count)
            base.deallocate()
        }
        readBuffer.deallocate()
        closeFD(epfd)
    }

    /// Prints `ready`, then serves commands and sessions until the input ends or the output is lost;
    /// every session is closed by then.
    public func run() {
        control.emit(ControlLine.ready(pid: Int(getpid())))
        var events = [epoll_event](repeating: epoll_event(), count: 256)
        while running {
            if !controlPollable && !controlEnded { readControl() }
            guard running else { break }
            let n: Int
            do {
                n = try events.withUnsafeMutableBufferPointer { buffer throws(SystemError) -> Int in
                    try Epoll.epoll_wait(epfd: epfd, events: buffer.baseAddress.unsafelyUnwrapped,
                                         maxevents: CInt(buffer.count), timeout: waitMillis())
                }
            } catch {
                logger.critical("epoll_wait failed", metadata: ["error": "\(error)"])
                closeAll(reporting: true)
                return
            }
            for i in 0..<n {
                let event = events[i]
                if event.data.u64 == Self.controlToken {
                    readControl()
                } else {
                    dispatch(slot: Int(event.data.u64), events: event.events)
                }
            }
            tick()
            if control.outputLost {
                logger.notice("The control output is gone: closing every session")
                closeAll(reporting: false)
                running = false
            }
        }
    }

    /// One socket's events.
    func dispatch(slot s: Int, events: UInt32) {
        guard s >= 0 && s < sessions.count else { return }
        let state = sessions[s].state
        if state == .connecting {
            if events & (Epoll.out | Epoll.err | Epoll.hup) != 0 { finishConnect(s) }
            return
        }
        guard state.isOpen else { return }
        if events & Epoll.out != 0 { flush(s) }
        if sessions[s].state.isOpen && events & (Epoll.in | Epoll.rdhup | Epoll.hup | Epoll.err) != 0 {
            readAll(s)
        }
    }

    /// Work that comes with time: logins to start, deadlines, progress lines, the end of a run.
    func tick() {
        let now = MonotonicClock.now()
        tickLogin(now)
        tickPing(now)
    }

    /// How long epoll may sleep: until the next deadline, progress line or sweep; no limit when
    /// nothing is under way.
    func waitMillis() -> CInt {
        if !controlPollable && !controlEnded { return 0 }
        var next = Double.infinity
        if let run = login, !run.finished {
            if run.next < sessions.count && run.inFlight.count < config.concurrency { return 0 }
            next = min(next, run.nextProgress, run.nextSweep)
        }
        if let run = ping {
            if run.next < sessions.count && run.outstanding.count < run.limit { return 0 }
            next = min(next, run.nextSweep)
        }
        guard next.isFinite else { return -1 }
        let millis = ((next - MonotonicClock.now()) * 1000).rounded(.up)
        return CInt(max(0, min(millis, 60_000)))
    }
}
