import Foundation
import Logging
import Testing

@testable import MegaphoneCore

struct JSONLogHandlerTests {
    final class Lines: @unchecked Sendable {
        let lock = NSLock()
        var all: [String] = []
        func add(_ line: String) { lock.withLock { all.append(line) } }
    }

    func logger(_ lines: Lines, level: Logger.Level = .info) -> Logger {
        Logger(label: "megaphone") { label in
            var handler = JSONLogHandler(label: label, sink: { lines.add($0) })
            handler.logLevel = level
            return handler
        }
    }

    /// Each line is one JSON object a shipper can parse: fixed fields, then the metadata, escaped.
    @Test func oneParsableObjectPerLine() throws {
        let lines = Lines()
        var log = logger(lines)
        log[metadataKey: "reactor"] = "0"
        log.info("Accepted \"connection\"\n", metadata: ["connection.id": "#Ref<0.1.2.3>", "peer": "127.0.0.1:5",
                                                        "msg": "clash", "list": ["a", "b"], "map": ["k": "\u{1}"]])
        log.debug("not at info")
        #expect(lines.all.count == 1)
        let line = try #require(lines.all.first)
        #expect(line.hasSuffix("}\n") && line.filter { $0 == "\n" }.count == 1)
        let object = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
        #expect(object["level"] as? String == "info")
        #expect(object["label"] as? String == "megaphone")
        #expect(object["msg"] as? String == "Accepted \"connection\"\n")
        #expect(object["connection.id"] as? String == "#Ref<0.1.2.3>")
        #expect(object["reactor"] as? String == "0")
        #expect(object["meta.msg"] as? String == "clash")
        #expect(object["list"] as? [String] == ["a", "b"])
        #expect((object["map"] as? [String: String])?["k"] == "\u{1}")
        let ts = try #require(object["ts"] as? String)
        #expect(ts.count == 24 && ts.hasSuffix("Z") && ts.contains("T"))
    }

    @Test func theLevelFilters() {
        let lines = Lines()
        let log = logger(lines, level: .warning)
        log.info("quiet")
        log.warning("loud")
        #expect(lines.all.count == 1)
    }
}
