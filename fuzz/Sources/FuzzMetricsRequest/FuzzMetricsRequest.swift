import CFuzzDriver
import MegaphoneCore

/// Fuzzes `MetricsRequest.judge` as the metrics thread drives it: the bytes arrive in reads whose
/// sizes the first byte chooses, and each read is judged with everything received so far, up to the
/// first verdict that is not `.incomplete`. Checks: `.incomplete` only while fewer than `maxSize`
/// bytes are in (so a scraper can never make the thread buffer more); a verdict, once given on a
/// prefix, is what the server answers, and its response is well-formed.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzMetricsRequest(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    guard let data, size >= 1 else { return 0 }
    let all = Array(UnsafeBufferPointer(start: data, count: size))
    let maxSize = 64 + Int(all[0]) * 4
    let input = Array(all.dropFirst())
    var received: [UInt8] = []
    var offset = 0
    var k = Int(all[0])
    while offset < input.count {
        let n = min(input.count - offset, 1 + k % 17)
        k = (k &* 31 &+ 7) & 0xFFFF
        // The server reads at most maxSize + 1 bytes in all.
        received += input[offset..<min(offset + n, offset + max(0, maxSize + 1 - received.count))]
        offset += n
        let verdict = MetricsRequest.judge(received, maxSize: maxSize)
        switch verdict {
        case .incomplete:
            check(received.count < maxSize, "incomplete past maxSize")
            continue
        case .metrics:
            check(received.count <= maxSize + 1, "served a head longer than maxSize")
        case .error(let status):
            let response = status.response()
            check(response.starts(with: Array("HTTP/1.1 \(status.rawValue) ".utf8)), "bad status line")
        }
        return 0
    }
    return 0
}

func check(_ condition: Bool, _ what: StaticString) {
    if !condition { fatalError("fuzz invariant broken: \(what)") }
}

@_cdecl("FuzzMetricsRequest_main")
public func fuzzMetricsRequestMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    var argc = argc
    var argv = argv
    return LLVMFuzzerRunDriver(&argc, &argv) { fuzzMetricsRequest($0, $1) }
}
