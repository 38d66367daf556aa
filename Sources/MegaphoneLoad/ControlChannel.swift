import MegaphoneCore

#if canImport(Glibc)
import Glibc
#endif

/// The orchestrator's channel: command lines on one fd (stdin), event lines on another (stdout).
/// Both stay blocking: stdin is read only when epoll says it is readable (or is a regular file,
/// which never blocks), and a line out is written whole before the loop goes on, so that lines
/// never interleave and the orchestrator sees each event when it happens.
struct ControlChannel {
    let input: CInt
    let output: CInt
    private var pending: [UInt8] = []
    private var discarding = false
    /// The output fd failed (the orchestrator is gone): the loop closes everything and returns.
    private(set) var outputLost = false

    /// Longest command line kept; a longer one is dropped whole and answered with an error.
    static let maxLine = 64 << 10

    enum Input: Equatable {
        case line(String)
        case tooLong
        case end
    }

    init(input: CInt, output: CInt) {
        self.input = input
        self.output = output
    }

    /// One read of the input: the lines it completed, then `.end` if the input is at its end (or
    /// failed). A last line without a newline counts at the end.
    mutating func read() -> [Input] {
        var chunk = [UInt8](repeating: 0, count: 4096)
        let n = chunk.withUnsafeMutableBytes { raw -> Int in
            (try? syscallBlocking("read") { Glibc.read(input, raw.baseAddress, raw.count) }) ?? -1
        }
        var out: [Input] = []
        if n > 0 {
            for b in chunk[0..<n] { take(b, into: &out) }
        } else {
            if !pending.isEmpty && !discarding { out.append(.line(String(decoding: pending, as: UTF8.self))) }
            pending.removeAll()
            out.append(.end)
        }
        return out
    }

    private mutating func take(_ b: UInt8, into out: inout [Input]) {
        if b == UInt8(ascii: "\n") {
            if discarding {
                discarding = false
            } else {
                out.append(.line(String(decoding: pending, as: UTF8.self)))
            }
            pending.removeAll(keepingCapacity: pending.count <= 4096)
            return
        }
        guard !discarding else { return }
        pending.append(b)
        if pending.count > Self.maxLine {
            pending.removeAll()
            discarding = true
            out.append(.tooLong)
        }
    }

    /// Writes `line` and a newline, whole.
    mutating func emit(_ line: String) {
        guard !outputLost else { return }
        var bytes = Array(line.utf8)
        bytes.append(UInt8(ascii: "\n"))
        var sent = 0
        while sent < bytes.count {
            let n = bytes.withUnsafeBytes { raw -> Int in
                let rest = UnsafeRawBufferPointer(rebasing: raw[sent...])
                return (try? syscallBlocking("write") { Glibc.write(output, rest.baseAddress, rest.count) }) ?? -1
            }
            guard n > 0 else {
                outputLost = true
                return
            }
            sent += n
        }
    }
}
