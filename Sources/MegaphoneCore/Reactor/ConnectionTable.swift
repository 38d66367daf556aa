/// The state of one client connection: a small struct in a flat array indexed by fd.
///
/// An idle connection costs this struct and nothing else: no class instance, closure or buffer. Byte
/// queues exist only while bytes are pending.
public struct ConnectionSlot {
    public struct Flags: OptionSet, Sendable {
        public let rawValue: UInt8
        public init(rawValue: UInt8) { self.rawValue = rawValue }
        /// A get_data is outstanding: the next chunk goes to the owner.
        public static let armed = Flags(rawValue: 1 << 0)
        /// epoll said readable and no read has hit EAGAIN since (edge-triggered).
        public static let readable = Flags(rawValue: 1 << 1)
        /// The socket took everything we wrote; cleared on a short write until EPOLLOUT.
        public static let writable = Flags(rawValue: 1 << 2)
        /// The client has shut its side (EPOLLRDHUP); what it sent before may still be in the kernel
        /// or in `inbound`, and is delivered on get_data like any input.
        public static let peerClosed = Flags(rawValue: 1 << 3)
        /// Close requested: flushing `outbound`, then the fd closes.
        public static let closing = Flags(rawValue: 1 << 4)
        /// Half-closed and drained: the owner has been told `tcp_closed`; only output flows now.
        public static let eofNotified = Flags(rawValue: 1 << 6)
        /// Bytes moved (either way) since the last idle sweep (see `Reactor+Idle.swift`).
        public static let active = Flags(rawValue: 1 << 5)
        /// The owner has been told `megaphone_idle` and nothing has moved since.
        public static let idleNotified = Flags(rawValue: 1 << 7)
    }

    /// 0 while the slot is free.
    public var connID: UInt64 = 0
    /// The process that last asked for data; `.none` until the first get_data (events go to the
    /// controller then).
    public var owner: PidRef = .none
    /// Bumped on every reuse of the fd number; carried in epoll's user data to drop stale events. 16
    /// bits are plenty (an fd would have to be reused 65,536 times within one epoll_wait batch) and
    /// leave room for `address` in what was padding (the slot is 64 bytes with `framing`).
    public var generation: UInt16 = 0
    public var flags: Flags = []
    /// The opening stage (see `StreamOpening`): STARTTLS, handshake, or established.
    var opening = Opening(.established, listener: .tcp)
    /// The client address's handle in `AddressLimiter` (0: not counted), given back when it closes.
    public var address: UInt32 = 0
    public var inbound: ByteQueue? = nil
    public var outbound: ByteQueue? = nil
    /// How bytes cross the socket: plain, or the connection's TLS session (owned by the reactor, freed
    /// when it closes). One pointer wide.
    var transport: SocketTransport = .plain
    /// The framing stage (see `Framing`): `raw`, or the parsed connection's state. One pointer wide.
    var framing: Framing = .raw

    public var isFree: Bool { connID == 0 }
}

/// Connections by fd (flat array) and by ConnId (dictionary). Owned by one reactor thread.
public struct ConnectionTable {
    private var slots: [ConnectionSlot] = []
    private var fds: [UInt64: CInt] = [:]

    public init() {}

    public var count: Int { fds.count }

    /// Takes `fd` into the table under `connID` and returns the slot's new generation.
    @discardableResult
    public mutating func insert(fd: CInt, connID: UInt64) -> UInt32 {
        precondition(fd >= 0 && connID != 0, "insert needs a valid fd and a non-zero ConnId")
        let index = Int(fd)
        if index >= slots.count {
            slots.append(contentsOf: repeatElement(ConnectionSlot(), count: Swift.max(index + 1 - slots.count, slots.count / 2)))
        }
        precondition(slots[index].isFree, "fd \(fd) is already in the connection table")
        let generation = slots[index].generation &+ 1
        slots[index] = ConnectionSlot(connID: connID, generation: generation, flags: [.writable])
        fds[connID] = fd
        return UInt32(generation)
    }

    /// Removes the connection on `fd` and returns what it held (its queues, for the caller to drop).
    @discardableResult
    public mutating func remove(fd: CInt) -> ConnectionSlot? {
        let index = Int(fd)
        guard index >= 0, index < slots.count, !slots[index].isFree else { return nil }
        let slot = slots[index]
        fds[slot.connID] = nil
        slots[index] = ConnectionSlot(generation: slot.generation)
        return slot
    }

    public func fd(of connID: UInt64) -> CInt? { fds[connID] }

    /// The live slot for `fd`, if any (the generation check is the caller's).
    public func contains(fd: CInt) -> Bool {
        fd >= 0 && Int(fd) < slots.count && !slots[Int(fd)].isFree
    }

    public subscript(_ fd: CInt) -> ConnectionSlot {
        get { slots[Int(fd)] }
        _modify { yield &slots[Int(fd)] }
    }

    /// The fds of every live connection (for shutdown and node-down sweeps).
    public var liveFDs: [CInt] { Array(fds.values) }
}
