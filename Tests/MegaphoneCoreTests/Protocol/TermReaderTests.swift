import Testing

@testable import MegaphoneCore

/// Encodes with ei (TermEncoder) and reads back with TermReader: both directions agree.
struct TermReaderTests {
    func encoded(_ build: (TermEncoder) -> Void) -> [UInt8] {
        let e = TermEncoder()
        e.reset()
        build(e)
        return e.bytes
    }

    func read<R>(_ bytes: [UInt8], _ body: (inout TermReader) throws -> R) rethrows -> R {
        try bytes.withUnsafeBytes { raw in
            var r = TermReader(raw)
            return try body(&r)
        }
    }

    @Test func integersOfEverySize() throws {
        for value: UInt64 in [0, 1, 255, 256, 70_000, 1 << 31, 1 << 40, UInt64.max] {
            let bytes = encoded { $0.uint(value) }
            let back = try read(bytes) { r in
                try r.readVersion()
                return try r.readUInt64()
            }
            #expect(back == value)
        }
    }

    @Test func negativeIntegerIsNotAConnID() {
        let bytes = encoded { $0.int(-5) }
        #expect(throws: TermError.badValue) {
            try read(bytes) { r in
                try r.readVersion()
                return try r.readUInt64()
            }
        }
    }

    @Test func atomsTuplesAndPids() throws {
        let bytes = encoded { e in
            e.tuple(3)
            e.atom("get_data")
            e.pid(node: "shell@host", num: 42, serial: 7, creation: 99)
            e.atom("naïve")
        }
        try read(bytes) { r in
            try r.readVersion()
            #expect(try r.readTupleHeader() == 3)
            #expect(try r.readAtom() == "get_data")
            #expect(try r.readPid() == DecodedPid(node: "shell@host", num: 42, serial: 7, creation: 99))
            #expect(try r.readAtom() == "naïve")
            #expect(r.isAtEnd)
        }
    }

    @Test func iodataFlattensNestedAndImproperLists() throws {
        // ["ab", <<"cd">>, [$e, [<<"f">> | <<"g">>]], $h] encoded by hand with ei.
        let bytes = encoded { e in
            e.list(4)
            e.binary(Array("ab".utf8))  // stands in for a string element
            e.binary(Array("cd".utf8))
            e.list(2)
            e.uint(UInt64(UInt8(ascii: "e")))
            e.list(1)
            e.binary(Array("f".utf8))
            e.binary(Array("g".utf8))  // improper tail
            e.emptyList()
            e.uint(UInt64(UInt8(ascii: "h")))
            e.emptyList()
        }
        let data = try read(bytes) { r in
            try r.readVersion()
            return try r.readIOData(limit: 100)
        }
        #expect(String(decoding: data, as: UTF8.self) == "abcdefgh")
    }

    @Test func iodataRejectsNonBytes() {
        for build: (TermEncoder) -> Void in [
            { $0.uint(7) },  // a bare integer is not iodata
            { e in e.list(1); e.uint(300); e.emptyList() },  // not a byte
            { e in e.list(1); e.atom("x"); e.emptyList() },
            { e in e.list(1); e.binary([1]); e.uint(3) },  // integer tail
        ] {
            let bytes = encoded(build)
            #expect(throws: TermError.self) {
                try read(bytes) { r in
                    try r.readVersion()
                    return try r.readIOData(limit: 100)
                }
            }
        }
    }

    @Test func iodataLimitIsEnforcedBeforeCopying() {
        let bytes = encoded { $0.binary([UInt8](repeating: 1, count: 1000)) }
        #expect(throws: TermError.tooLarge) {
            try read(bytes) { r in
                try r.readVersion()
                return try r.readIOData(limit: 999)
            }
        }
    }

    @Test func deepNestingNeedsNoStack() throws {
        // 200,000 nested one-element lists around one byte: [[[...[7]...]]]
        let depth = 200_000
        var bytes: [UInt8] = [131]
        for _ in 0..<depth { bytes += [108, 0, 0, 0, 1] }
        bytes += [97, 7]
        bytes += [UInt8](repeating: 106, count: depth)
        let data = try read(bytes) { r in
            try r.readVersion()
            return try r.readIOData(limit: 10)
        }
        #expect(data == [7])
        let range = try read(bytes) { r in
            try r.readVersion()
            return try r.skipTerm()
        }
        #expect(range == 1..<bytes.count)
    }

    @Test func everyTruncationThrows() {
        let bytes = encoded { e in
            e.tuple(4)
            e.atom("start")
            e.pid(node: "a@b", num: 1, serial: 2, creation: 3)
            e.uint(1 << 40)
            e.list(1)
            e.binary([1, 2, 3])
            e.emptyList()
        }
        for cut in 1..<bytes.count {
            let prefix = Array(bytes[0..<cut])
            #expect(throws: TermError.self) {
                try read(prefix) { r in
                    try r.readVersion()
                    return try r.skipTerm()
                }
            }
        }
    }

    @Test func hugeLengthFieldsDoNotAllocate() {
        // A list that claims 2^32-1 elements, and a binary that claims 4 GB, in a 10-byte buffer.
        for bytes: [UInt8] in [[131, 108, 255, 255, 255, 255, 106], [131, 109, 255, 255, 255, 255, 1, 2]] {
            #expect(throws: TermError.self) {
                try read(bytes) { r in
                    try r.readVersion()
                    return try r.skipTerm()
                }
            }
            #expect(throws: TermError.self) {
                try read(bytes) { r in
                    try r.readVersion()
                    return try r.readIOData(limit: .max)
                }
            }
        }
    }

    @Test func randomBytesNeverTrap() {
        var rng = SplitMix64(seed: 2026)
        for _ in 0..<20_000 {
            let count = Int(rng.next() % 40)
            var bytes: [UInt8] = [131]
            for _ in 0..<count { bytes.append(UInt8(truncatingIfNeeded: rng.next())) }
            // Any outcome but a crash is fine.
            _ = try? read(bytes) { r in
                try r.readVersion()
                return try r.skipTerm()
            }
            _ = try? read(bytes) { r in
                try r.readVersion()
                return try r.readIOData(limit: 1 << 20)
            }
        }
    }
}

/// A small deterministic generator, so a failing fuzz case can be replayed.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
