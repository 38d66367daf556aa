#if canImport(Glibc)
import Glibc
#endif

/// The `process_*` metrics every Prometheus client library exports (the names client_golang's process
/// collector uses), read from `/proc` at scrape time. A value that cannot be read is left out.
enum ProcessMetrics {
    static func families() -> [MetricFamily] {
        var families: [MetricFamily] = []
        let pageSize = Int(sysconf(CInt(_SC_PAGESIZE)))
        let ticks = Double(sysconf(CInt(_SC_CLK_TCK)))
        if let stat = ProcFS.read("/proc/self/stat").flatMap(parseStat), ticks > 0 {
            families.append(MetricFamily(
                "process_cpu_seconds_total", .counter, help: "Total user and system CPU time spent in seconds.",
                value: .double(Double(stat.userTicks + stat.systemTicks) / ticks)))
            if let boot = ProcFS.read("/proc/stat").flatMap(parseBootTime) {
                families.append(MetricFamily(
                    "process_start_time_seconds", .gauge,
                    help: "Start time of the process since unix epoch in seconds.",
                    value: .double(Double(boot) + Double(stat.startTicks) / ticks)))
            }
            families.append(MetricFamily(
                "process_virtual_memory_bytes", .gauge, help: "Virtual memory size in bytes.",
                value: .int(stat.virtualBytes)))
            families.append(MetricFamily(
                "process_resident_memory_bytes", .gauge, help: "Resident memory size in bytes.",
                value: .int(stat.residentPages * pageSize)))
        }
        if let open = ProcFS.countEntries("/proc/self/fd") {
            // Less the one opendir() itself holds while counting.
            families.append(MetricFamily(
                "process_open_fds", .gauge, help: "Number of open file descriptors.", value: .int(max(0, open - 1))))
        }
        var limit = rlimit()
        if getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit) == 0 {
            families.append(MetricFamily(
                "process_max_fds", .gauge, help: "Maximum number of open file descriptors.",
                value: .int(Int(clamping: limit.rlim_cur))))
        }
        return families
    }

    struct Stat: Equatable {
        var userTicks: Int
        var systemTicks: Int
        var startTicks: Int
        var virtualBytes: Int
        var residentPages: Int
    }

    /// `/proc/self/stat` (proc(5)): the command name, field 2, is in parentheses and may hold spaces
    /// and parentheses itself, so fields are counted from the last `)`. utime and stime are fields 14
    /// and 15, starttime 22, vsize 23, rss 24.
    static func parseStat(_ bytes: [UInt8]) -> Stat? {
        guard let close = bytes.lastIndex(of: UInt8(ascii: ")")) else { return nil }
        let fields = bytes[(close + 1)...].split(separator: UInt8(ascii: " "))
        // fields[0] is field 3 (state).
        func field(_ n: Int) -> Int? {
            let i = n - 3
            guard i < fields.count else { return nil }
            return Int(String(decoding: fields[fields.startIndex + i], as: UTF8.self)
                .trimmingCharacters(in: "\n"))
        }
        guard let utime = field(14), let stime = field(15), let start = field(22), let vsize = field(23),
              let rss = field(24) else { return nil }
        return Stat(userTicks: utime, systemTicks: stime, startTicks: start, virtualBytes: vsize, residentPages: rss)
    }

    /// The `btime` line of `/proc/stat`: boot time, seconds since the epoch.
    static func parseBootTime(_ bytes: [UInt8]) -> Int? {
        for line in bytes.split(separator: UInt8(ascii: "\n")) {
            let words = line.split(separator: UInt8(ascii: " "))
            if words.count == 2, String(decoding: words[words.startIndex], as: UTF8.self) == "btime" {
                return Int(String(decoding: words[words.startIndex + 1], as: UTF8.self))
            }
        }
        return nil
    }
}

extension String {
    fileprivate func trimmingCharacters(in character: Character) -> String {
        String(drop(while: { $0 == character }).reversed().drop(while: { $0 == character }).reversed())
    }
}
