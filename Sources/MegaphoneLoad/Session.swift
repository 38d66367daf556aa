import MegaphoneXML

/// One session's slot in the loop's table (indexed by user index minus `first`): the only memory a
/// session holds while idle. The user index is the slot's position, so it is not stored.
///
/// The parser keeps ~48 bytes between stanzas and shares the usual stream context; `output` is
/// empty (no allocation) except while a write would block.
struct Session {
    var fd: CInt = -1
    var state: SessionState = .waiting
    var parser = XMLStreamParser()
    /// Bytes the socket did not take yet, sent when epoll says it is writable again.
    var output: [UInt8] = []
}
