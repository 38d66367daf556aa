#if canImport(Glibc)
import Glibc
#endif

/// Reading a small file whole (a cookie, an options file), with a bound on its size.
package enum SmallFile {
    package enum ReadError: Error, Equatable {
        /// `fopen` failed: the errno's text.
        case cannotOpen(String)
        /// Longer than the bound.
        case tooLarge
    }

    package static func read(_ path: String, maxBytes: Int) throws(ReadError) -> [UInt8] {
        guard let file = fopen(path, "r") else { throw .cannotOpen(String(cString: strerror(errno))) }
        defer { fclose(file) }
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = fread(&buffer, 1, buffer.count, file)
            if n <= 0 { break }
            bytes += buffer[0..<n]
            guard bytes.count <= maxBytes else { throw .tooLarge }
        }
        return bytes
    }
}
