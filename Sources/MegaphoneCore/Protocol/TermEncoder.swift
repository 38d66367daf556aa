import CEI

/// Builds one outgoing message with ei's `ei_x_encode_*` functions in a reused, growable `ei_x_buff`.
///
/// One per thread that encodes (the distribution thread). `ei_x_buff` grows in small steps and never
/// shrinks, so `reset()` frees a buffer that a large message blew up.
public final class TermEncoder {
    private var x = ei_x_buff()
    /// What a buffer may keep between messages; a larger one is freed by `reset()`.
    private static let keptCapacity = 256 * 1024

    public init() {
        ei_x_new_with_version(&x)
    }

    deinit { ei_x_free(&x) }

    /// Starts a new message (version byte only).
    public func reset() {
        if x.buffsz > Self.keptCapacity {
            ei_x_free(&x)
            ei_x_new_with_version(&x)
        } else {
            x.index = 0
            ei_x_encode_version(&x)
        }
    }

    /// The encoded message so far.
    public func withBytes<R>(_ body: (UnsafeRawBufferPointer) -> R) -> R {
        body(UnsafeRawBufferPointer(start: x.buff, count: Int(x.index)))
    }

    public var bytes: [UInt8] { withBytes { Array($0) } }

    /// For `ei_send`: the buffer and its length.
    func withBuffer<R>(_ body: (UnsafeMutablePointer<CChar>, CInt) -> R) -> R {
        body(x.buff, x.index)
    }

    public func tuple(_ arity: Int) { ei_x_encode_tuple_header(&x, arity) }
    /// An atom from UTF-8 text. (`ei_x_encode_atom` would read the bytes as latin-1 and encode them
    /// twice.)
    public func atom(_ name: String) {
        var name = name
        name.withUTF8 { utf8 in
            utf8.withMemoryRebound(to: CChar.self) {
                _ = ei_x_encode_atom_len_as(&x, $0.baseAddress, CInt($0.count), ERLANG_UTF8, ERLANG_UTF8)
            }
        }
    }
    public func uint(_ value: UInt64) { ei_x_encode_ulonglong(&x, value) }
    public func int(_ value: Int) { ei_x_encode_longlong(&x, Int64(value)) }
    public func list(_ count: Int) { if count > 0 { ei_x_encode_list_header(&x, count) } }
    public func emptyList() { ei_x_encode_empty_list(&x) }
    public func map(_ count: Int) { ei_x_encode_map_header(&x, count) }

    public func binary(_ bytes: UnsafeRawBufferPointer) {
        ei_x_encode_binary(&x, bytes.baseAddress, CInt(bytes.count))
    }

    public func binary(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { binary($0) }
    }

    /// Appends an already encoded term (without version byte), e.g. a Ref sent back unchanged.
    public func raw(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { raw($0) }
    }

    public func raw(_ bytes: UnsafeRawBufferPointer) {
        _ = ei_x_append_buf(&x, bytes.baseAddress, CInt(bytes.count))
    }

    func pid(_ p: erlang_pid) {
        var p = p
        ei_x_encode_pid(&x, &p)
    }

    public func pid(node: String, num: UInt32, serial: UInt32, creation: UInt32) {
        var p = erlang_pid()
        CEI_pid_set(&p, node, num, serial, creation)
        ei_x_encode_pid(&x, &p)
    }

    /// `{A, B, C, D}` for IPv4, eight 16-bit groups for IPv6: `inet:ip_address()`.
    public func ip(_ address: IPAddress) {
        if address.isIPv4 {
            tuple(4)
            for b in address.bytes { uint(UInt64(b)) }
        } else {
            tuple(8)
            for g in address.ipv6Groups { uint(UInt64(g)) }
        }
    }

    /// `{IP, Port}`.
    public func address(_ address: SocketAddress) {
        tuple(2)
        ip(address.ip)
        uint(UInt64(address.port))
    }
}
