import CFuzzDriver
import MegaphoneCore

/// Fuzzes `Request.decode` (every verb, the start options) on arbitrary bytes after the version byte,
/// then checks what the node would send back: a malformed request's `{megaphone_error, Tag, Reason}`
/// is encoded with ei as DistributionLink does, and must be one well-formed term that an Erlang node
/// can decode (every atom Megaphone builds at most 255 characters of valid UTF-8), or the node that
/// receives it would drop its distribution link.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzRequest(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    var bytes: [UInt8] = [131]
    if let data { bytes.append(contentsOf: UnsafeBufferPointer(start: data, count: size)) }
    let nodes = NodeNames()
    let limits = RequestLimits(maxPutData: 64, maxSendData: 4096)
    let refs = ConnectionRefs(node: "megaphone@vm", creation: 7)
    let outcome: Result<Request, RequestError> = bytes.withUnsafeBytes { raw in
        do throws(RequestError) {
            return .success(try Request.decode(raw, nodes: nodes, refs: refs, limits: limits))
        } catch {
            return .failure(error)
        }
    }
    switch outcome {
    case .success(let request):
        checkDecoded(request)
    case .failure(let error):
        let e = TermEncoder()
        e.reset()
        Event.requestError(tag: error.tag, reason: error.reason).encode(into: e, refs: refs, selfPid: { _ in })
        let reply = e.bytes
        var tagRange: Range<Int>? = nil
        if case .ref(let ref) = error.tag {
            // The caller's Ref is echoed unchanged: it must be exactly a term the request held.
            check(bytes.firstRange(of: ref) != nil, "echoed Ref is not from the request")
            // {megaphone_error, Ref, _}: 131, 104 3, 119 15 "megaphone_error", then the Ref.
            let start = 20
            let echoed = reply.count >= start + ref.count && Array(reply[start..<(start + ref.count)]) == ref
            check(echoed, "Ref not echoed")
            tagRange = start..<(start + ref.count)
        }
        check(StrictTerm.isWellFormed(reply, opaque: tagRange), "malformed error reply")
    }
    return 0
}

func checkDecoded(_ request: Request) {
    switch request {
    case .putData(_, let data): check(data.count <= 64, "put_data past its limit")
    case .sendData(_, let data): check(data.count <= 4096, "send_data past its limit")
    case .start(_, _, let options):
        check(options.maxChunk > 0 && options.maxChunk <= 16 << 20, "max_chunk out of range")
        check(options.maxConnections > 0 && options.sendQueueLimit > 0 && options.inputBufferLimit > 0, "limits")
        check(options.handshakeTimeoutMillis > 0 && options.handshakeTimeoutMillis <= 3_600_000, "handshake_timeout")
        for spec in options.listeners {
            let e = TermEncoder()
            e.reset()
            spec.encode(into: e)
            check(StrictTerm.isWellFormed(e.bytes, opaque: nil), "listener spec does not encode")
        }
    default: break
    }
}

func check(_ condition: Bool, _ what: StaticString) {
    if !condition { fatalError("fuzz invariant broken: \(what)") }
}

/// A strict reader of the terms Megaphone encodes (what erts' decoder would refuse, this refuses):
/// complete, nothing left over, atoms of at most 255 characters in valid UTF-8, integers in canonical
/// size. `opaque` is a byte range taken as is (a Ref echoed from the request).
enum StrictTerm {
    static func isWellFormed(_ b: [UInt8], opaque: Range<Int>?) -> Bool {
        guard b.first == 131 else { return false }
        var i = 1
        var pending = 1
        while pending > 0 {
            pending -= 1
            if let opaque, i == opaque.lowerBound {
                i = opaque.upperBound
                continue
            }
            guard i < b.count else { return false }
            let tag = b[i]
            i += 1
            func need(_ n: Int) -> Bool { n >= 0 && n <= b.count - i }
            func u32() -> Int? {
                guard need(4) else { return nil }
                defer { i += 4 }
                return Int(b[i]) << 24 | Int(b[i + 1]) << 16 | Int(b[i + 2]) << 8 | Int(b[i + 3])
            }
            func atom() -> Bool {
                guard i < b.count else { return false }
                let t = b[i]
                i += 1
                var n = 0
                if t == 119 {
                    guard need(1) else { return false }
                    n = Int(b[i]); i += 1
                } else if t == 118 {
                    guard need(2) else { return false }
                    n = Int(b[i]) << 8 | Int(b[i + 1]); i += 2
                } else {
                    return false
                }
                guard need(n) else { return false }
                let text = Array(b[i..<(i + n)])
                i += n
                guard let s = String(validating: text, as: UTF8.self) else { return false }
                return s.unicodeScalars.count <= 255
            }
            switch tag {
            case 97: guard need(1) else { return false }; i += 1
            case 98: guard need(4) else { return false }; i += 4
            case 110:
                guard need(2) else { return false }
                let n = Int(b[i]); i += 2
                guard need(n), n > 0, b[i + n - 1] != 0 else { return false }
                i += n
            case 118, 119:
                i -= 1
                guard atom() else { return false }
            case 104: guard need(1) else { return false }; pending += Int(b[i]); i += 1
            case 105: guard let n = u32() else { return false }; pending += n
            case 106: break
            case 108: guard let n = u32() else { return false }; pending += n + 1
            case 109: guard let n = u32(), need(n) else { return false }; i += n
            case 116: guard let n = u32() else { return false }; pending += 2 * n
            case 88: guard atom(), need(12) else { return false }; i += 12
            default: return false
            }
            guard pending <= b.count - i else { return false }
        }
        return i == b.count
    }
}

@_cdecl("FuzzRequest_main")
public func fuzzRequestMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    var argc = argc
    var argv = argv
    return LLVMFuzzerRunDriver(&argc, &argv) { fuzzRequest($0, $1) }
}
