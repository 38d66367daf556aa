import Testing

@testable import MegaphoneCore

#if canImport(Glibc)
import Glibc
#endif

/// The exposition text as Prometheus reads it: `# TYPE` before each family's samples, sample names
/// matching their family, counters ending in `_total`.
private struct ParsedText {
    var types: [String: String] = [:]
    var helps: [String: String] = [:]
    /// `name{labels}` -> value text, in order.
    var samples: [(key: String, value: String)] = []

    init(_ text: String) {
        var family: String? = nil
        for line in text.split(separator: "\n", omittingEmptySubsequences: false).dropLast() {
            if line.hasPrefix("# HELP ") {
                let rest = line.dropFirst(7)
                let name = String(rest.prefix { $0 != " " })
                helps[name] = String(rest.dropFirst(name.count + 1))
                #expect(types[name] == nil, "HELP comes before TYPE for \(name)")
            } else if line.hasPrefix("# TYPE ") {
                let parts = line.split(separator: " ")
                #expect(parts.count == 4)
                types[String(parts[2])] = String(parts[3])
                family = String(parts[2])
            } else {
                let key = String(line.prefix { $0 != " " })
                var name = String(key.prefix { $0 != "{" })
                if let family, types[family] == "histogram" {
                    for suffix in ["_bucket", "_sum", "_count"] where name == family + suffix { name = family }
                }
                #expect(name == family, "sample \(key) outside its family")
                samples.append((key, String(line.dropFirst(key.count + 1))))
            }
        }
    }

    func value(_ key: String) -> String? { samples.first { $0.key == key }?.value }
}

@Suite struct NodeMetricsTests {
    private func source() -> (NodeMetrics, Counters, ByteBudget) {
        let counters = Counters()
        let toErlang = ByteBudget(limit: 1 << 20)
        let metrics = NodeMetrics(counters: counters, toErlang: toErlang, toClients: ByteBudget(limit: 1 << 20),
                                  includeProcess: false)
        return (metrics, counters, toErlang)
    }

    @Test func namesTypesAndValuesFollowTheCounters() {
        let (metrics, counters, toErlang) = source()
        for _ in 0..<3 { counters.opened(via: .tcp) }
        counters.opened(via: .tls)
        counters.opened(via: .tls)
        counters.closed(via: .tls)
        counters.accepted.store(7, ordering: .relaxed)
        counters.bytesIn.store(1234, ordering: .relaxed)
        counters.bytesOut.store(99, ordering: .relaxed)
        counters.controllers.store(1, ordering: .relaxed)
        counters.distHandshakes.store(2, ordering: .relaxed)
        counters.distHandshakesRefused.store(3, ordering: .relaxed)
        toErlang.added(300)
        toErlang.taken(100)
        let text = ParsedText(metrics.render())
        #expect(text.value(#"megaphone_connections{transport="tcp"}"#) == "3")
        #expect(text.value(#"megaphone_connections{transport="starttls"}"#) == "0")
        #expect(text.value(#"megaphone_connections{transport="tls"}"#) == "1")
        #expect(text.value("megaphone_connections_accepted_total") == "7")
        #expect(text.value("megaphone_bytes_received_total") == "1234")
        #expect(text.value("megaphone_bytes_sent_total") == "99")
        #expect(text.value("megaphone_controllers") == "1")
        #expect(text.value("megaphone_dist_queue_bytes") == "200")
        #expect(text.value("megaphone_dist_queue_peak_bytes") == "300")
        #expect(text.value(#"megaphone_dist_handshakes_total{result="ok"}"#) == "2")
        #expect(text.value(#"megaphone_dist_handshakes_total{result="refused"}"#) == "3")
        #expect(text.types["megaphone_connections"] == "gauge")
        #expect(text.types["megaphone_dist_queue_bytes"] == "gauge")
        #expect(text.types["megaphone_controllers"] == "gauge")
        for (name, type) in text.types {
            #expect((type == "counter") == name.hasSuffix("_total"), "\(name) is a \(type)")
            #expect(text.helps[name].map { !$0.isEmpty } == true, "\(name) has help")
        }
    }

    @Test func everyCloseReasonAppears() {
        let (metrics, counters, _) = source()
        for (i, reason) in CloseReason.allCases.enumerated() {
            for _ in 0...i { counters.closed(reason) }
        }
        let text = ParsedText(metrics.render())
        for (i, reason) in CloseReason.allCases.enumerated() {
            #expect(text.value(#"megaphone_connections_closed_total{reason="\#(reason.name)"}"#) == "\(i + 1)")
        }
        #expect(text.samples.filter { $0.key.hasPrefix("megaphone_connections_closed_total{") }.count
                == CloseReason.allCases.count)
    }

    @Test func tlsHandshakeResultsComeFromTheirCounterAndCloseReasons() {
        let (metrics, counters, _) = source()
        counters.closed(.tlsError)
        counters.closed(.tlsError)
        counters.closed(.handshakeTimeout)
        counters.closed(.handshakeLimit)
        counters.closed(.handshakeLimit)
        counters.closed(.handshakeLimit)
        counters.tlsHandshakes.store(9, ordering: .relaxed)
        let text = ParsedText(metrics.render())
        #expect(text.value(#"megaphone_tls_handshakes_total{result="ok"}"#) == "9")
        #expect(text.value(#"megaphone_tls_handshakes_total{result="failed"}"#) == "2")
        #expect(text.value(#"megaphone_tls_handshakes_total{result="timeout"}"#) == "1")
        #expect(text.value(#"megaphone_tls_handshakes_total{result="refused"}"#) == "3")
    }

    @Test func readToSendIsAHistogramInSeconds() {
        let (metrics, counters, _) = source()
        counters.readToSend.observe(nanos: 7_000, count: 3)       // <= 10 µs
        counters.readToSend.observe(nanos: 30_000)                // <= 50 µs
        counters.readToSend.observe(nanos: 2_000_000_000)         // above 1 s
        let text = ParsedText(metrics.render())
        #expect(text.types["megaphone_read_to_send_seconds"] == "histogram")
        #expect(text.value(#"megaphone_read_to_send_seconds_bucket{le="1e-05"}"#) == "3")
        #expect(text.value(#"megaphone_read_to_send_seconds_bucket{le="2.5e-05"}"#) == "3")
        #expect(text.value(#"megaphone_read_to_send_seconds_bucket{le="5e-05"}"#) == "4")
        #expect(text.value(#"megaphone_read_to_send_seconds_bucket{le="1.0"}"#) == "4")
        #expect(text.value(#"megaphone_read_to_send_seconds_bucket{le="+Inf"}"#) == "5")
        #expect(text.value("megaphone_read_to_send_seconds_count") == "5")
        #expect(text.value("megaphone_read_to_send_seconds_sum").flatMap(Double.init) == 2.000051)
        let buckets = text.samples.filter { $0.key.hasPrefix("megaphone_read_to_send_seconds_bucket") }
        #expect(buckets.count == LatencyHistogram.boundsNanos.count + 1)
        // Cumulative: never decreasing.
        let counts = buckets.compactMap { Int($0.value) }
        #expect(counts == counts.sorted())
    }

    @Test func processMetrics() {
        var (metrics, _, _) = source()
        metrics.includeProcess = true
        let text = ParsedText(metrics.render())
        let rss = text.value("process_resident_memory_bytes").flatMap { Int($0) }
        #expect(rss.map { $0 > 1 << 20 } == true)
        let fds = text.value("process_open_fds").flatMap { Int($0) }
        #expect(fds.map { $0 >= 3 } == true)
        let start = text.value("process_start_time_seconds").flatMap { Double($0) }
        let now = Double(time(nil))
        #expect(start.map { $0 <= now + 2 && $0 > now - 24 * 3600 } == true)
        #expect(text.types["process_cpu_seconds_total"] == "counter")
        #expect(text.value("process_max_fds").flatMap { Int($0) }.map { $0 > 0 } == true)
    }

    @Test func statWithParenthesesInTheCommand() {
        let line = "123 (a) (b c) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22\n"
        // Fields: 3=S ... 14=utime(11) 15=stime(12) 22=starttime(19) 23=vsize(20) 24=rss(21).
        let stat = ProcessMetrics.parseStat(Array(line.utf8))
        #expect(stat == ProcessMetrics.Stat(userTicks: 11, systemTicks: 12, startTicks: 19, virtualBytes: 20,
                                           residentPages: 21))
        #expect(ProcessMetrics.parseStat(Array("garbage".utf8)) == nil)
        #expect(ProcessMetrics.parseBootTime(Array("cpu 1 2\nbtime 1700000000\nprocesses 5\n".utf8)) == 1_700_000_000)
    }
}
