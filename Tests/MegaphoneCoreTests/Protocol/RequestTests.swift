import Testing

@testable import MegaphoneCore

struct RequestTests {
    let nodes = NodeNames()
    let limits = RequestLimits(maxPutData: 1024)
    let refs = ConnectionRefs(node: "megaphone@vm", creation: 7)

    /// ConnId 513 of this run of megaphone@vm.
    func conn(_ e: TermEncoder, _ id: UInt64 = 513) { refs.encode(id, into: e) }

    func decode(_ build: (TermEncoder) -> Void) throws(RequestError) -> Request {
        let e = TermEncoder()
        e.reset()
        build(e)
        let bytes = e.bytes
        var result: Result<Request, RequestError> = .failure(RequestError(replyTo: nil, tag: .undefined, reason: .badarg("x")))
        bytes.withUnsafeBytes { raw in
            do throws(RequestError) {
                result = .success(try Request.decode(raw, nodes: nodes, refs: refs, limits: limits))
            } catch {
                result = .failure(error)
            }
        }
        return try result.get()
    }

    func failure(_ build: (TermEncoder) -> Void) -> RequestError? {
        do {
            _ = try decode(build)
            return nil
        } catch {
            return error
        }
    }

    func shellPid(_ e: TermEncoder) { e.pid(node: "shell@vm", num: 80, serial: 0, creation: 5) }

    /// The options a `start` with `opts` decodes to.
    func options(_ opts: [(TermEncoder) -> Void]) throws -> StartOptions {
        let request = try decode { e in
            e.tuple(4); e.atom("start"); shellPid(e); e.atom("r")
            e.list(opts.count); opts.forEach { $0(e) }; e.emptyList()
        }
        guard case .start(_, _, let options) = request else { throw RequestError(replyTo: nil, tag: .undefined, reason: .badarg("x")) }
        return options
    }

    @Test func everyRequestOfTheVocabulary() throws {
        let shell = PidRef(node: 1, num: 80, serial: 0, creation: 5)
        #expect(try decode { e in e.tuple(3); e.atom("get_data"); shellPid(e); conn(e) }
                == .getData(from: shell, connID: 513))
        #expect(try decode { e in e.tuple(3); e.atom("put_data"); conn(e); e.binary([1, 2]) }
                == .putData(connID: 513, bytes: [1, 2]))
        #expect(try decode { e in e.tuple(3); e.atom("send_data"); conn(e); e.list(1); e.binary([3]); e.emptyList() }
                == .sendData(connID: 513, bytes: [3]))
        #expect(try decode { e in e.tuple(2); e.atom("close"); conn(e) } == .close(connID: 513))
        #expect(try decode { e in e.tuple(1); e.atom("shutdown") } == .shutdownQuietly)
        #expect(try decode { e in e.tuple(3); e.atom("shutdown"); shellPid(e); e.atom("r") }
                == .shutdown(from: shell, ref: [119, 1, 114]))
        #expect(try decode { e in e.tuple(3); e.atom("stats"); shellPid(e); e.uint(9) }
                == .stats(from: shell, ref: [97, 9]))
    }

    @Test func startOptions() throws {
        let request = try decode { e in
            e.tuple(4)
            e.atom("start")
            shellPid(e)
            e.atom("ref")
            e.list(5)
            e.tuple(2); e.atom("listen")
            e.list(2)
            e.tuple(3); e.atom("tcp"); e.tuple(4); [127, 0, 0, 1].forEach { e.uint($0) }; e.uint(5222)
            e.tuple(3); e.atom("tls"); e.atom("any"); e.uint(0)
            e.emptyList()
            e.tuple(2); e.atom("max_chunk"); e.uint(16)
            e.tuple(2); e.atom("max_connections"); e.atom("infinity")
            e.tuple(2); e.atom("send_queue_limit"); e.uint(4096)
            e.tuple(2); e.atom("controller"); e.pid(node: "ej@vm", num: 1, serial: 2, creation: 3)
            e.emptyList()
        }
        guard case .start(_, _, let options) = request else {
            Issue.record("not a start: \(request)")
            return
        }
        #expect(options.listeners == [
            ListenerSpec(transport: .tcp, ip: .loopbackIPv4, port: 5222),
            ListenerSpec(transport: .tls, ip: .anyIPv4, port: 0),
        ])
        #expect(options.maxChunk == 16)
        #expect(options.maxConnections == .max)
        #expect(options.sendQueueLimit == 4096)
        #expect(options.inputBufferLimit == 1 << 20)
        #expect(options.controller == PidRef(node: 2, num: 1, serial: 2, creation: 3))
    }

    @Test func malformedRequestsSayWhatAndWhere() {
        // {get_data, notapid, x}: no From to answer, so the caller falls back to the sender.
        let notAPid = failure { e in e.tuple(3); e.atom("get_data"); e.atom("notapid"); e.atom("x") }
        #expect(notAPid == RequestError(replyTo: nil, tag: .undefined, reason: .badarg("from")))

        let notInt = failure { e in e.tuple(3); e.atom("get_data"); shellPid(e); e.binary(Array("notint".utf8)) }
        #expect(notInt?.reason == .badarg("conn_id"))
        #expect(notInt?.replyTo == PidRef(node: 1, num: 80, serial: 0, creation: 5))

        #expect(failure { e in e.tuple(2); e.atom("foo"); e.atom("bar") }?.reason == .unknownRequest(tag: "foo"))
        #expect(failure { e in e.atom("not_a_tuple") }?.reason == .unknownRequest(tag: nil))
        #expect(failure { e in e.tuple(0) }?.reason == .unknownRequest(tag: nil))
        // Known tag, wrong arity.
        #expect(failure { e in e.tuple(2); e.atom("get_data"); e.uint(1) }?.reason == .unknownRequest(tag: "get_data"))

        let tooBig = failure { e in e.tuple(3); e.atom("put_data"); conn(e, 77 << 8 | 1); e.binary([UInt8](repeating: 0, count: 1025)) }
        #expect(tooBig == RequestError(replyTo: nil, tag: .connID(77 << 8 | 1), reason: .tooLarge(limit: 1024)))

        let badData = failure { e in e.tuple(3); e.atom("send_data"); conn(e); e.atom("x") }
        #expect(badData?.reason == .badarg("data"))
    }

    /// ConnIds are references that carry the node's name and creation: one of another node, or of an
    /// earlier run of this node, is an unknown connection, never a connection of this run that happens
    /// to have the same number (integer ConnIds had that: two nodes, or a node and its restart, gave
    /// out the same numbers). Integers are not ConnIds at all.
    @Test func connIdsOfOtherNodesAndRunsAreUnknown() throws {
        let otherNode = ConnectionRefs(node: "megaphone2@vm", creation: 7)
        let earlierRun = ConnectionRefs(node: "megaphone@vm", creation: 6)
        for other in [otherNode, earlierRun] {
            let e = TermEncoder()
            e.reset()
            other.encode(513, into: e)
            let raw = Array(e.bytes.dropFirst())
            let get = failure { e in e.tuple(3); e.atom("get_data"); shellPid(e); other.encode(513, into: e) }
            #expect(get == RequestError(replyTo: PidRef(node: 1, num: 80, serial: 0, creation: 5), tag: .ref(raw),
                                        reason: .unknownConnection, quiet: false))
            let send = failure { e in e.tuple(3); e.atom("send_data"); other.encode(513, into: e); e.binary([1]) }
            #expect(send?.reason == .unknownConnection)
            #expect(send?.quiet == true)
            #expect(failure { e in e.tuple(2); e.atom("close"); other.encode(513, into: e) }?.quiet == true)
            #expect(failure { e in e.tuple(3); e.atom("put_data"); other.encode(513, into: e); e.binary([1]) }?.quiet == false)
        }
        // A reference Erlang made itself (one ID word layout we never give out) is not ours either.
        let local = failure { e in
            e.tuple(2); e.atom("close")
            e.raw([ExternalTag.newerReference, 0, 3, ExternalTag.smallAtomUTF8, 12] + Array("megaphone@vm".utf8)
                  + [0, 0, 0, 7] + [0, 3, 0, 0] + [0, 0, 0, 1] + [0, 0, 0, 0])
        }
        #expect(local?.reason == .unknownConnection)
        #expect(failure { e in e.tuple(2); e.atom("close"); e.uint(513) }?.reason == .badarg("conn_id"))
        // Every id this node gives out comes back as itself.
        for id: UInt64 in [256, 513, 1 << 40 | 7, ConnectionRefs.maxSequence << 8 | 255] {
            #expect(try decode { e in e.tuple(2); e.atom("close"); conn(e, id) } == .close(connID: id))
        }
    }

    @Test func badStartOptionsAreNamed() {
        func start(_ opts: (TermEncoder) -> Void) -> ErrorReason? {
            failure { e in
                e.tuple(4); e.atom("start"); shellPid(e); e.atom("r")
                e.list(1); opts(e); e.emptyList()
            }?.reason
        }
        #expect(start { e in e.tuple(2); e.atom("listen"); e.atom("bogus") } == .badopt("listen"))
        #expect(start { e in e.tuple(2); e.atom("max_chunk"); e.uint(0) } == .badopt("max_chunk"))
        #expect(start { e in e.tuple(2); e.atom("colour"); e.atom("blue") } == .badopt("colour"))
        #expect(start { e in
            e.tuple(2); e.atom("listen"); e.list(1)
            e.tuple(3); e.atom("udp"); e.atom("any"); e.uint(1)
            e.emptyList()
        } == .badopt("listen"))
        #expect(start { e in
            e.tuple(2); e.atom("listen"); e.list(1)
            e.tuple(3); e.atom("tcp"); e.atom("any"); e.uint(70_000)
            e.emptyList()
        } == .badopt("listen"))
    }

    @Test func limitOptions() throws {
        let defaults = try options([])
        #expect(defaults.maxConnectionsPerIP == .max)
        #expect(defaults.connectionRatePerIP == nil)
        #expect(defaults.streamHeaderTimeoutMillis == nil)
        let set = try options([
            { e in e.tuple(2); e.atom("max_connections_per_ip"); e.uint(5) },
            { e in e.tuple(2); e.atom("connection_rate_per_ip"); e.tuple(2); e.uint(3); e.uint(1000) },
            { e in e.tuple(2); e.atom("stream_header_timeout"); e.uint(750) },
        ])
        #expect(set.maxConnectionsPerIP == 5)
        #expect(set.connectionRatePerIP == ConnectionRate(count: 3, periodMillis: 1000))
        #expect(set.streamHeaderTimeoutMillis == 750)
        let off = try options([
            { e in e.tuple(2); e.atom("max_connections_per_ip"); e.atom("infinity") },
            { e in e.tuple(2); e.atom("connection_rate_per_ip"); e.atom("infinity") },
            { e in e.tuple(2); e.atom("stream_header_timeout"); e.atom("infinity") },
        ])
        #expect(off == defaults)
        #expect(throws: RequestError.self) { try options([{ e in e.tuple(2); e.atom("connection_rate_per_ip"); e.uint(3) }]) }
        #expect(throws: RequestError.self) {
            try options([{ e in e.tuple(2); e.atom("connection_rate_per_ip"); e.tuple(2); e.uint(0); e.uint(1000) }])
        }
        #expect(throws: RequestError.self) { try options([{ e in e.tuple(2); e.atom("stream_header_timeout"); e.uint(0) }]) }
        #expect(throws: RequestError.self) { try options([{ e in e.tuple(2); e.atom("max_connections_per_ip"); e.atom("lots") }]) }
    }

    @Test func parsedModeRequestsAndOptions() throws {
        #expect(try decode { e in e.tuple(3); e.atom("credit"); conn(e); e.uint(8) } == .credit(connID: 513, elements: 8))
        #expect(try decode { e in e.tuple(2); e.atom("reset_stream"); conn(e) } == .resetStream(connID: 513))
        #expect(try decode { e in e.tuple(3); e.atom("shaper"); conn(e); e.tuple(2); e.uint(1000); e.uint(5000) }
                == .shaper(connID: 513, rate: ShaperRate(bytesPerSecond: 1000, burst: 5000)))
        #expect(try decode { e in e.tuple(3); e.atom("shaper"); conn(e); e.atom("none") } == .shaper(connID: 513, rate: nil))
        #expect(failure { e in e.tuple(3); e.atom("credit"); conn(e); e.int(0) }?.reason == .badarg("credit"))
        #expect(failure { e in e.tuple(3); e.atom("credit"); conn(e); e.atom("lots") }?.reason == .badarg("credit"))
        #expect(failure { e in e.tuple(3); e.atom("shaper"); conn(e); e.atom("fast") }?.reason == .badarg("shaper"))
        #expect(failure { e in e.tuple(3); e.atom("shaper"); conn(e); e.tuple(2); e.uint(0); e.uint(1) }?.reason == .badarg("shaper"))

        let defaults = try options([])
        #expect(defaults.parser == .raw && defaults.window == 16 && defaults.maxStanzaSize == InputMode.stanzaSizeCap)
        let parsed = try options([
            { e in e.tuple(2); e.atom("parser"); e.atom("megaphone") },
            { e in e.tuple(2); e.atom("max_stanza_size"); e.uint(65536) },
            { e in e.tuple(2); e.atom("window"); e.uint(4) },
        ])
        #expect(parsed.parser == .parsed && parsed.maxStanzaSize == 65536 && parsed.window == 4)
        #expect(try options([{ e in e.tuple(2); e.atom("max_stanza_size"); e.atom("infinity") }]).maxStanzaSize
                == InputMode.stanzaSizeCap)
        #expect(throws: RequestError.self) { try options([{ e in e.tuple(2); e.atom("parser"); e.atom("expat") }]) }
        #expect(throws: RequestError.self) { try options([{ e in e.tuple(2); e.atom("window"); e.uint(0) }]) }
        #expect(throws: RequestError.self) { try options([{ e in e.tuple(2); e.atom("max_stanza_size"); e.uint(1 << 30) }]) }
    }

    @Test func balanceOption() throws {
        #expect(try options([]).balance == .leastSessions)
        #expect(try options([{ e in e.tuple(2); e.atom("balance"); e.atom("round_robin") }]).balance == .roundRobin)
        #expect(try options([{ e in e.tuple(2); e.atom("balance"); e.atom("least_sessions") }]).balance == .leastSessions)
        #expect(failure { e in
            e.tuple(4); e.atom("start"); shellPid(e); e.atom("r")
            e.list(1); e.tuple(2); e.atom("balance"); e.atom("random"); e.emptyList()
        }?.reason == .badopt("balance"))
    }
}
