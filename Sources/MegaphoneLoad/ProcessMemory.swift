import MegaphoneCore

#if canImport(Glibc)
import Glibc
#endif

/// The process's resident set, as `/proc/self/status` gives it.
enum ProcessMemory {
    /// VmRSS in KiB; 0 if it cannot be read.
    static func residentKilobytes() -> Int {
        guard let fd = try? syscallBlocking("open", { Glibc.open("/proc/self/status", O_RDONLY | O_CLOEXEC) }) else {
            return 0
        }
        defer { closeFD(fd) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 2048)
        while bytes.count < 64 << 10 {
            let n = chunk.withUnsafeMutableBytes { raw in
                (try? syscallBlocking("read") { Glibc.read(fd, raw.baseAddress, raw.count) }) ?? 0
            }
            if n <= 0 { break }
            bytes += chunk[0..<n]
        }
        return vmRSS(in: bytes) ?? 0
    }

    /// The number on the `VmRSS:` line (`VmRSS:     1234 kB`).
    static func vmRSS(in status: [UInt8]) -> Int? {
        let key = Array("VmRSS:".utf8)
        for line in status.split(separator: UInt8(ascii: "\n")) where line.starts(with: key) {
            let digits = line.dropFirst(key.count).drop { $0 == UInt8(ascii: " ") || $0 == UInt8(ascii: "\t") }
                .prefix { $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }
            return Int(String(decoding: digits, as: UTF8.self))
        }
        return nil
    }
}
