import Logging

@testable import MegaphoneCore
@testable import MegaphoneLoad

#if canImport(Glibc)
import Glibc
#endif

/// A `LoadClient` on its own thread, driven as the orchestrator drives the process: command lines
/// into a pipe, event lines out of another.
final class ClientHarness {
    private let commands: CInt
    private let events: CInt
    private let thread: pthread_t
    private var pending: [UInt8] = []
    /// Every line read so far that no `line(_:)` call took.
    private(set) var skipped: [String] = []

    init(_ configuration: LoadConfiguration) throws {
        var toClient: [CInt] = [-1, -1]
        var fromClient: [CInt] = [-1, -1]
        guard pipe(&toClient) == 0, pipe(&fromClient) == 0 else {
            throw SystemError(errno: errno, call: "pipe2")
        }
        commands = toClient[1]
        // Non-blocking, so that `command` can read events while the pipe is full.
        _ = fcntl(commands, F_SETFL, fcntl(commands, F_GETFL) | O_NONBLOCK)
        events = fromClient[0]
        let input = toClient[0]
        let output = fromClient[1]
        thread = try PThread.spawn(name: "test-load") {
            if let client = try? LoadClient(configuration: configuration,
                                            logger: Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() }),
                                            input: input, output: output) {
                client.run()
            }
            closeFD(input)
            closeFD(output)
        }
    }

    deinit {
        finish()
        closeFD(events)
    }

    private var finished = false

    /// End of the command input: the client closes everything and its thread ends.
    func finish() {
        guard !finished else { return }
        finished = true
        closeFD(commands)
        PThread.join(thread)
    }

    /// Writes a command line, reading events meanwhile: the client writes its lines whole before it
    /// reads the next command, so a writer that did not read could wait for it forever.
    func command(_ line: String) {
        let bytes = Array((line + "\n").utf8)
        var sent = 0
        while sent < bytes.count {
            var fds = [pollfd(fd: commands, events: Int16(POLLOUT), revents: 0),
                       pollfd(fd: events, events: Int16(POLLIN), revents: 0)]
            guard poll(&fds, 2, 10_000) > 0 else { return }
            if fds[1].revents & Int16(POLLIN) != 0 { readEvents() }
            if fds[0].revents & Int16(POLLOUT) != 0 {
                let n = bytes[sent...].withUnsafeBytes { Glibc.write(commands, $0.baseAddress, $0.count) }
                if n > 0 { sent += n } else if errno != EAGAIN { return }
            }
        }
    }

    /// One read of the event pipe into `pending`; false at its end.
    @discardableResult
    private func readEvents() -> Bool {
        var buffer = [UInt8](repeating: 0, count: 65536)
        let n = Glibc.read(events, &buffer, buffer.count)
        guard n > 0 else { return false }
        pending += buffer[0..<n]
        return true
    }

    /// The next line whose first word is `word` (earlier lines of other words are kept in
    /// `skipped`), waiting at most `millis`; nil if none came.
    func line(_ word: String, within millis: Int64 = 5_000) -> String? {
        if let i = skipped.firstIndex(where: { $0 == word || $0.hasPrefix(word + " ") }) {
            return skipped.remove(at: i)
        }
        let deadline = monotonicMillis() + millis
        while true {
            while let nl = pending.firstIndex(of: UInt8(ascii: "\n")) {
                let text = String(decoding: pending[..<nl], as: UTF8.self)
                pending.removeFirst(nl + 1)
                if text == word || text.hasPrefix(word + " ") { return text }
                skipped.append(text)
            }
            let left = deadline - monotonicMillis()
            guard left > 0 else { return nil }
            var p = pollfd(fd: events, events: Int16(POLLIN), revents: 0)
            guard poll(&p, 1, Int32(left)) == 1, readEvents() else { return nil }
        }
    }

    /// The fields of the answer to one `status`.
    func status() -> [String: Int] {
        command("status")
        return line("status").map(Self.fields) ?? [:]
    }

    /// The integer `key=value` fields of an event line.
    static func fields(_ line: String) -> [String: Int] {
        var out: [String: Int] = [:]
        for word in line.split(separator: " ").dropFirst() {
            let kv = word.split(separator: "=", maxSplits: 1)
            if kv.count == 2, let v = Int(kv[1]) { out[String(kv[0])] = v }
        }
        return out
    }
}
