import MegaphoneXML

/// The framing stage: how a connection's input is cut into what its owner receives.
///
/// - `raw`: each chunk the transport read (at most `max_chunk`) goes to the owner as
///   `{tcp, ConnId, Binary}` on get_data, and ejabberd's own parser (one per c2s) finds the XML.
/// - `parsed`: the node parses the stream (`MegaphoneXML`) and sends the owner the events
///   `fxml_stream` would, `{'$gen_event', Event}`, paced by credit (see `ParsedInput`), so the
///   session keeps no parser of its own.
enum Framing {
    case raw
    case parsed(ParsedInput)
}

/// A parsed connection's state: the parser (a few bytes between stanzas) and the owner's credit.
///
/// Flow control without get_data: the owner's first get_data grants `window` elements; after that
/// the session returns credit with `{credit, ConnId, N}` as it handles elements (mod_megaphone's
/// `c2s_handle_recv` hook), and the node parses no further than the credit allows, leaving the rest
/// in `inbound` and then in the kernel. So a flooding client fills neither the session's mailbox
/// nor our memory. Stream headers, the stream's end and errors cost no credit: each stream has at
/// most one of each.
final class ParsedInput {
    var parser = XMLStreamParser()
    var credit: Int32 = 0
    /// The session's shaper, once `change_shaper` has named one (`.none` until then).
    var shaper = ReadShaper.none
}

/// The reactor's side of the framing stage.
extension Reactor {
    /// Hands one chunk of client input to the owner of an armed raw connection, and disarms it (one
    /// chunk per get_data). The bytes count in the distribution queue until the distribution thread
    /// has written them.
    func deliver(_ fd: CInt, _ chunk: [UInt8]) {
        table[fd].flags.remove(.armed)
        markActive(fd)
        toErlang.added(chunk.count)
        if !opening.headerWatch.isEmpty { opening.lookForHeader(table[fd].connID, in: chunk) }
        counters.chunksDelivered.add(1, ordering: .relaxed)
        emit(to: table[fd].owner, .data(connID: table[fd].connID, bytes: chunk))
    }

    /// Parses `bytes` of a parsed connection as far as its credit goes and sends the owner the
    /// events. Returns how many bytes it used; the caller keeps the rest.
    func parse(_ fd: CInt, _ input: ParsedInput, _ bytes: UnsafeRawBufferPointer) -> Int {
        guard let config else { return 0 }
        var at = 0
        while input.credit > 0 && !input.parser.hasFailed {
            let (used, event) = input.parser.feed(UnsafeRawBufferPointer(rebasing: bytes[at...]), limits: config.xmlLimits)
            at += used
            guard let event else { break }
            send(event, of: fd, input)
        }
        return at
    }

    func send(_ event: XMLStreamEvent, of fd: CInt, _ input: ParsedInput) {
        let id = table[fd].connID
        if case .error(.restricted(let text)) = event, input.parser.hasStreamHeader {
            // ejabberd has no event for this: mod_megaphone's c2s_handle_info hook sends the
            // session's <restricted-xml/> stream error. Before any header the session could not
            // send it after its own header, so it gets the event and answers <not-well-formed/>.
            counters.streamErrors.add(1, ordering: .relaxed)
            toErlang.added(text.utf8.count)
            emit(to: table[fd].owner, .restrictedXML(connID: id, text: text))
            return
        }
        var payload: [UInt8] = []
        ExternalTermFormat.encode(event, into: &payload)
        switch event {
        case .element:
            input.credit -= 1
            counters.elementsDelivered.add(1, ordering: .relaxed)
        case .streamStart:
            opening.headerWatch[id] = nil
        case .error(let error):
            counters.streamErrors.add(1, ordering: .relaxed)
            logger.debug("Client stream refused", metadata: ["connection.id": "\(id)", "error": "\(error.text)"])
        case .streamEnd, .streamCData:
            break
        }
        if input.credit <= 0 { table[fd].flags.remove(.armed) }
        toErlang.added(payload.count)
        emit(to: table[fd].owner, .stream(payload: payload))
    }

    /// `credit`: the owner has handled `elements` more; parse on.
    func credit(connID: UInt64, elements: Int) {
        guard let fd = establishedFD(of: connID), case .parsed(let input) = table[fd].framing,
              !table[fd].flags.contains(.closing) else { return }
        input.credit = Int32(Swift.min(Int(Int32.max), Int(input.credit) + elements))
        table[fd].flags.insert(.armed)
        serve(fd)
    }

    /// `shaper`: read this connection at most at `rate` bytes a second (nil: as fast as it comes).
    func setShaper(connID: UInt64, rate: (Int, Int)?) {
        guard let fd = establishedFD(of: connID), case .parsed(let input) = table[fd].framing else { return }
        input.shaper = rate.map { ReadShaper(rate: $0.0, burst: $0.1, now: monotonicMillis()) } ?? .none
        if !input.shaper.isLimited, paced.removeValue(forKey: connID) != nil { serve(fd) }
    }

    /// Serves the connections whose shaper has let enough bytes through again.
    func sweepPaced(now: Int64) {
        for (id, at) in paced where at <= now {
            paced[id] = nil
            guard let fd = establishedFD(of: id) else { continue }
            serve(fd)
        }
    }

    /// `reset_stream`: the session has restarted the stream (it does so before it sends SASL
    /// `<success/>`, so the client's next stream header can only come after this).
    func resetStream(connID: UInt64) {
        guard let fd = establishedFD(of: connID), case .parsed(let input) = table[fd].framing else { return }
        input.parser.reset()
    }
}
