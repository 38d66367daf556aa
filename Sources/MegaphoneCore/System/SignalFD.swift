import CLinux

#if canImport(Glibc)
import Glibc
#endif

/// The signals the node acts on (SIGINT and SIGTERM: shut down; SIGHUP: reload), read from a signalfd
/// by the thread that polls it instead of running in a handler.
///
/// Call `blockInCallingThread()` on the main thread before any other thread starts, so that every
/// thread inherits the mask and the signals wait for the signalfd (a handler could run on any thread,
/// in the middle of anything).
final class SignalFD {
    static let handled: [CInt] = [SIGINT, SIGTERM, SIGHUP]

    let fd: CInt

    init() throws(SystemError) {
        var set = Self.signalSet()
        fd = try syscallBlocking("signalfd") { signalfd(-1, &set, CInt(SFD_NONBLOCK | SFD_CLOEXEC)) }
    }

    deinit { closeFD(fd) }

    static func blockInCallingThread() {
        var set = signalSet()
        pthread_sigmask(SIG_BLOCK, &set, nil)
    }

    /// The signals that arrived since the last call, oldest first. Never waits.
    func take() -> [CInt] {
        var signals: [CInt] = []
        var info = signalfd_siginfo()
        let size = MemoryLayout<signalfd_siginfo>.size
        while case .processed(let n)? = try? syscall("read(signalfd)", { read(fd, &info, size) }), n == size {
            signals.append(CInt(info.ssi_signo))
        }
        return signals
    }

    private static func signalSet() -> sigset_t {
        var set = sigset_t()
        sigemptyset(&set)
        for s in handled { sigaddset(&set, s) }
        return set
    }
}
