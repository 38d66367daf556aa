import CFuzzDriver
import MegaphoneCore

/// Fuzzes `TermReader` on arbitrary bytes after the version byte: `skipTerm` (how a caller's Ref is
/// taken), `readIOData` (put_data/send_data payloads) and the typed readers Request uses. Any outcome
/// but a trap is allowed; what is returned must stay inside the buffer and the limit.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTerms(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    var bytes: [UInt8] = [131]
    if let data { bytes.append(contentsOf: UnsafeBufferPointer(start: data, count: size)) }
    bytes.withUnsafeBytes { raw in
        var r = TermReader(raw, offset: 1)
        if let range = try? r.skipTerm() {
            let inside = range.lowerBound == 1 && range.upperBound <= raw.count && range.upperBound == r.offset
            check(inside, "skipTerm range")
        }
        for limit in [0, 7, 1 << 20] {
            var r = TermReader(raw, offset: 1)
            if let out = try? r.readIOData(limit: limit) {
                check(out.count <= limit, "readIOData past its limit")
                check(r.offset <= raw.count, "readIOData past the buffer")
            }
        }
        // The typed readers, in a sequence chosen by the input, as a request decoder would call them.
        var t = TermReader(raw, offset: 1)
        var step = 0
        while !t.isAtEnd && step < 64 {
            let before = t.offset
            switch (t.peekTag() ?? 0) % 7 {
            case 0: _ = try? t.readAtom()
            case 1: _ = try? t.readTupleHeader()
            case 2: _ = try? t.readListHeader()
            case 3: _ = try? t.readPid()
            case 4: _ = try? t.readUInt64()
            case 5: _ = try? t.readInt()
            default: _ = try? t.skipTerm()
            }
            check(t.offset <= raw.count, "reader past the buffer")
            if t.offset == before { break }  // a failed read leaves the tag in place
            step += 1
        }
    }
    return 0
}

func check(_ condition: Bool, _ what: StaticString) {
    if !condition { fatalError("fuzz invariant broken: \(what)") }
}

@_cdecl("FuzzTerms_main")
public func fuzzTermsMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    var argc = argc
    var argv = argv
    return LLVMFuzzerRunDriver(&argc, &argv) { fuzzTerms($0, $1) }
}
