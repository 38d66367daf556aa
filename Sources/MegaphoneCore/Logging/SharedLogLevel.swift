import Logging
import Synchronization

/// The process's log level, which a reload may change while the node runs (SIGHUP re-reads it from
/// `--config`). Every handler that `LoggingSystem.bootstrap` makes reads it on each log call (one
/// relaxed load), so loggers already copied into the reactors follow a change at once.
public final class SharedLogLevel: Sendable {
    private let raw: Atomic<Int>

    public init(_ level: Logger.Level) {
        raw = Atomic(Self.index(level))
    }

    public var level: Logger.Level {
        let all = Logger.Level.allCases
        let i = raw.load(ordering: .relaxed)
        return all.indices.contains(i) ? all[i] : .info
    }

    public func set(_ level: Logger.Level) {
        raw.store(Self.index(level), ordering: .relaxed)
    }

    private static func index(_ level: Logger.Level) -> Int {
        Logger.Level.allCases.firstIndex(of: level) ?? 0
    }
}

/// A handler whose level is the process's `SharedLogLevel`; everything else is `Inner`'s. Setting
/// `logLevel` on any logger sets it for all: the node has one level, as ejabberd has one `loglevel`.
public struct SharedLevelLogHandler<Inner: LogHandler>: LogHandler {
    public var inner: Inner
    public let shared: SharedLogLevel

    public init(_ inner: Inner, level shared: SharedLogLevel) {
        self.inner = inner
        self.shared = shared
    }

    public var logLevel: Logger.Level {
        get { shared.level }
        set { shared.set(newValue) }
    }

    public var metadata: Logger.Metadata {
        get { inner.metadata }
        set { inner.metadata = newValue }
    }

    public var metadataProvider: Logger.MetadataProvider? {
        get { inner.metadataProvider }
        set { inner.metadataProvider = newValue }
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { inner[metadataKey: key] }
        set { inner[metadataKey: key] = newValue }
    }

    public func log(event: LogEvent) {
        inner.log(event: event)
    }
}
