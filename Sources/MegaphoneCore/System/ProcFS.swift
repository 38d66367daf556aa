#if canImport(Glibc)
import Glibc
#endif

/// Small reads of `/proc`, for the process metrics. Not for any hot path: each call opens a file.
enum ProcFS {
    /// The whole of a small file such as `/proc/self/stat` (at most `limit` bytes), or nil if it
    /// cannot be read.
    static func read(_ path: String, limit: Int = 64 << 10) -> [UInt8]? {
        guard let fd = try? syscallBlocking("open", { Glibc.open(path, O_RDONLY | O_CLOEXEC) }) else { return nil }
        defer { closeFD(fd) }
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while bytes.count < limit {
            let n = buffer.withUnsafeMutableBytes { raw in
                try? syscallBlocking("read") { Glibc.read(fd, raw.baseAddress, raw.count) }
            }
            guard let n else { return nil }
            if n == 0 { break }
            bytes += buffer[0..<n]
        }
        return bytes
    }

    /// Entries of a directory such as `/proc/self/fd`, without `.` and `..`; nil if it cannot be opened.
    static func countEntries(_ path: String) -> Int? {
        guard let dir = opendir(path) else { return nil }
        defer { closedir(dir) }
        var count = 0
        while let entry = readdir(dir) {
            let isDot = withUnsafeBytes(of: entry.pointee.d_name) { name in
                name[0] == UInt8(ascii: ".")
                    && (name[1] == 0 || (name[1] == UInt8(ascii: ".") && name[2] == 0))
            }
            if !isDot { count += 1 }
        }
        return count
    }
}
