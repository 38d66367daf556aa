import Testing

@testable import MegaphoneCore

struct EventTests {
    let refs = ConnectionRefs(node: "megaphone@vm", creation: 4)

    /// The connection id of the reference at `r`; 0 when it is not one of ours. (Not an Optional:
    /// comparing a `UInt64?` inside `#expect` reads 9 bytes from an 8-byte slot under ASan, in the
    /// Swift runtime's AnyHashable conversion, and the sanitizer run stops there.)
    func connID(_ r: inout TermReader, _ raw: UnsafeRawBufferPointer) throws -> UInt64 {
        refs.id(of: try r.readReference(), in: raw) ?? 0
    }
    func encode(_ event: Event) -> [UInt8] {
        let e = TermEncoder()
        e.reset()
        event.encode(into: e, refs: refs, selfPid: { $0.pid(node: "megaphone@vm", num: 0, serial: 0, creation: 4) })
        return e.bytes
    }

    @Test func connectCarriesBothAddresses() throws {
        let peer = SocketAddress(ip: .loopbackIPv4, port: 40_000)
        let local = SocketAddress(ip: IPAddress(bytes: [0xfe, 0x80] + [UInt8](repeating: 0, count: 13) + [1])!, port: 5222)
        let bytes = encode(.connected(connID: 256, peer: peer, local: local, transport: .tcp))
        try bytes.withUnsafeBytes { raw in
            var r = TermReader(raw)
            try r.readVersion()
            #expect(try r.readTupleHeader() == 6)
            #expect(try r.readAtom() == "megaphone_connect")
            #expect(try r.readPid().node == "megaphone@vm")
            #expect(try connID(&r, raw) == 256)
            #expect(try r.readTupleHeader() == 2)
            #expect(try r.readTupleHeader() == 4)
            #expect(try (0..<4).map { _ in try r.readInt() } == [127, 0, 0, 1])
            #expect(try r.readInt() == 40_000)
            #expect(try r.readTupleHeader() == 2)
            #expect(try r.readTupleHeader() == 8)
            #expect(try (0..<8).map { _ in try r.readInt() } == [0xfe80, 0, 0, 0, 0, 0, 0, 1])
            #expect(try r.readInt() == 5222)
            #expect(try r.readAtom() == "tcp")
            #expect(r.isAtEnd)
        }
    }

    @Test func dataAndErrors() throws {
        try encode(.data(connID: 257, bytes: [1, 2, 3])).withUnsafeBytes { raw in
            var r = TermReader(raw)
            try r.readVersion()
            #expect(try r.readTupleHeader() == 3)
            #expect(try r.readAtom() == "tcp")
            #expect(try connID(&r, raw) == 257)
            #expect(try r.readIOData(limit: 10) == [1, 2, 3])
        }
        try encode(.requestError(tag: .ref([97, 5]), reason: .unknownRequest(tag: "foo"))).withUnsafeBytes { raw in
            var r = TermReader(raw)
            try r.readVersion()
            #expect(try r.readTupleHeader() == 3)
            #expect(try r.readAtom() == "megaphone_error")
            #expect(try r.readInt() == 5)
            #expect(try r.readTupleHeader() == 2)
            #expect(try r.readAtom() == "unknown_request")
            #expect(try r.readAtom() == "foo")
        }
    }

    /// A ConnId is a reference of this node and run, as Erlang decodes it (`NEWER_REFERENCE_EXT`, node
    /// atom, creation, three ID words), which the node maps back to the connection.
    @Test func connIdsAreReferencesOfThisNode() throws {
        let bytes = encode(.closed(connID: 5 << 40 | 0x1234_5678 << 8 | 3))
        #expect(Array(bytes.prefix(4)) == [131, 104, 2, 119])
        try bytes.withUnsafeBytes { raw in
            var r = TermReader(raw)
            try r.readVersion()
            #expect(try r.readTupleHeader() == 2)
            #expect(try r.readAtom() == "tcp_closed")
            let ref = try r.readReference()
            #expect(String(decoding: UnsafeRawBufferPointer(rebasing: raw[ref.node]), as: UTF8.self) == "megaphone@vm")
            #expect(ref.creation == 4)
            #expect(ref.idCount == 3)
            #expect(ref.ids == (3, 0x1234_5678, 5))
            #expect((refs.id(of: ref, in: raw) ?? 0) == 5 << 40 | 0x1234_5678 << 8 | 3)
            #expect(r.isAtEnd)
        }
    }

    /// Found by fuzz/FuzzRequest: a peer's atom of one letter and 300 combining accents is one
    /// Character, so cutting the echoed name at 255 Characters left 301 code points. ei refused to
    /// encode it and the reply went out as a 2-tuple holding one element, a term no Erlang node can
    /// decode (it drops the link). Atoms are cut at 255 code points, Erlang's limit.
    @Test func echoedAtomsAreCutAtErlangsLimit() throws {
        let long = "e" + String(repeating: "\u{301}", count: 300)
        for reason in [ErrorReason.unknownRequest(tag: long), .badopt(long)] {
            let bytes = encode(.requestError(tag: .undefined, reason: reason))
            try bytes.withUnsafeBytes { raw in
                var r = TermReader(raw)
                try r.readVersion()
                #expect(try r.readTupleHeader() == 3)
                #expect(try r.readAtom() == "megaphone_error")
                #expect(try r.readAtom() == "undefined")
                #expect(try r.readTupleHeader() == 2)
                _ = try r.readAtom()
                #expect(try r.readAtom().unicodeScalars.count == 255)
                #expect(r.isAtEnd)
            }
        }
    }
}
