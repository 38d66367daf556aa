/// The framing stage: how a connection's input is cut into what its owner receives.
///
/// Today there is one way, `raw`: each chunk the transport read (at most `max_chunk`) goes to the owner
/// as `{tcp, ConnId, Binary}`, and ejabberd's own parser (one per c2s) finds the XML in it. This is
/// the seam for parsing at the edge: an XML element framer becomes a second case here, with its
/// per-connection state as the case's payload (a few bytes between stanzas; scratch buffers per
/// thread, as `esl/exml` keeps them), and `deliver` hands the owner elements instead of chunks.
enum Framing: Equatable {
    case raw
}

/// The reactor's side of the framing stage.
extension Reactor {
    /// Hands one chunk of client input to the owner of an armed connection, through the
    /// connection's framing, and disarms it (one chunk per get_data). The bytes count in the
    /// distribution queue until the distribution thread has written them.
    func deliver(_ fd: CInt, _ chunk: [UInt8]) {
        table[fd].flags.remove(.armed)
        toErlang.added(chunk.count)
        if !opening.headerWatch.isEmpty { opening.lookForHeader(table[fd].connID, in: chunk) }
        counters.chunksDelivered.add(1, ordering: .relaxed)
        switch table[fd].framing {
        case .raw:
            emit(to: table[fd].owner, .data(connID: table[fd].connID, bytes: chunk))
        }
    }
}
