import CFuzzDriver
import MegaphoneCore

/// Fuzzes `StartTLSNegotiator` as the reactor drives it: the input arrives in reads whose sizes the
/// first bytes choose; after each read the negotiator sees everything still pending; `sendFeatures`
/// consumes the header and the loop goes on; `proceed` and `refuse` end the connection's plaintext.
/// Checks: `consumed` fits what was pending; no `needMore` past `maxBytes`; and a decision taken on a
/// prefix is the one taken on the whole input (reads split differently never change the outcome).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzStartTLS(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    guard let data, size >= 1 else { return 0 }
    let all = Array(UnsafeBufferPointer(start: data, count: size))
    let splitSeed = Int(all[0])
    let input = Array(all.dropFirst())
    let oneGo = run(input, reads: [input.count])
    var reads: [Int] = []
    var left = input.count
    var k = splitSeed
    while left > 0 {
        let n = min(left, 1 + k % 13)
        reads.append(n)
        left -= n
        k = (k &* 31 &+ 7) & 0xFFFF
    }
    let split = run(input, reads: reads)
    check(oneGo == split, "outcome depends on how the bytes were split into reads")
    return 0
}

/// The outcome with the random stream id blanked (it differs between runs).
enum Outcome: Equatable {
    case waiting(pending: Int, answered: Bool)
    case proceeded(answered: Bool)
    case refused(StartTLSNegotiator.Refusal)
}

func run(_ input: [UInt8], reads: [Int]) -> Outcome {
    var pending: [UInt8] = []
    var answered = false
    var offset = 0
    for n in reads {
        pending += input[offset..<(offset + n)]
        offset += n
        while true {
            switch StartTLSNegotiator.next(pending, headerAnswered: answered) {
            case .needMore:
                check(pending.count <= StartTLSNegotiator.maxBytes, "needMore past maxBytes")
            case .sendFeatures(let reply, let consumed):
                check(!answered, "features sent twice")
                check(consumed > 0 && consumed <= pending.count, "consumed out of range")
                check(String(validating: reply, as: UTF8.self) != nil, "reply is not UTF-8")
                pending.removeFirst(consumed)
                answered = true
                continue
            case .proceed:
                check(answered, "proceed before the stream header")
                return .proceeded(answered: answered)
            case .refuse(let reply, let reason):
                let text = String(validating: reply, as: UTF8.self)
                check(text != nil, "reply is not UTF-8")
                check(reason == .closed || (text ?? "").contains("<stream:error>"), "refusal without a stream error")
                return .refused(reason)
            }
            break
        }
    }
    return .waiting(pending: pending.count, answered: answered)
}

func check(_ condition: Bool, _ what: StaticString) {
    if !condition { fatalError("fuzz invariant broken: \(what)") }
}

@_cdecl("FuzzStartTLS_main")
public func fuzzStartTLSMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    var argc = argc
    var argv = argv
    return LLVMFuzzerRunDriver(&argc, &argv) { fuzzStartTLS($0, $1) }
}
