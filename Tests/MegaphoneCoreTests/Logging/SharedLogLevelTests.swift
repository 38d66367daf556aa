import Logging
import Testing

@testable import MegaphoneCore

struct SharedLogLevelTests {
    /// Loggers made before a change follow it: the reactors keep copies of theirs.
    @Test func everyLoggerFollowsTheSharedLevel() {
        let level = SharedLogLevel(.info)
        let lines = LockedLines()
        var a = Logger(label: "a") { label in
            SharedLevelLogHandler(JSONLogHandler(label: label, sink: { lines.append($0) }), level: level)
        }
        let b = Logger(label: "b") { label in
            SharedLevelLogHandler(JSONLogHandler(label: label, sink: { lines.append($0) }), level: level)
        }
        b.debug("hidden")
        #expect(lines.count == 0)
        level.set(.debug)
        #expect(a.logLevel == .debug && b.logLevel == .debug)
        b.debug("shown")
        #expect(lines.count == 1)
        a.logLevel = .error   // one level for the process, as ejabberd's loglevel
        #expect(level.level == .error && b.logLevel == .error)
        b.warning("hidden")
        #expect(lines.count == 1)
        for l in Logger.Level.allCases {
            level.set(l)
            #expect(level.level == l)
        }
    }
}

private final class LockedLines: Sendable {
    private let lines = Locked<[String]>([])
    func append(_ line: String) { lines.withLock { $0.append(line) } }
    var count: Int { lines.withLock { $0.count } }
}
