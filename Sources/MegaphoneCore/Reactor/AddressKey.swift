/// What every per-address limit counts as one client address: an IPv4 address or an IPv6 /64
/// prefix. One host or site usually holds a whole /64, so counting single IPv6 addresses would limit
/// nothing: a client could take a fresh address for every connection. IPv4-mapped IPv6 addresses
/// count as IPv4.
///
/// Used by `AddressLimiter` (`max_connections_per_ip`, `connection_rate_per_ip`) and
/// `HandshakeLimiter` (`max_handshakes_per_ip`), so the limits agree on who "one address" is.
struct AddressKey: Hashable, Sendable {
    var prefix: UInt64
    var isIPv4: Bool

    init(_ ip: IPAddress) {
        let b = ip.bytes
        let mapped = b.count == 16 && b[0..<10].allSatisfy { $0 == 0 } && b[10] == 0xFF && b[11] == 0xFF
        if b.count == 4 || mapped {
            let v4 = b.suffix(4)
            prefix = v4.reduce(0) { $0 << 8 | UInt64($1) }
            isIPv4 = true
        } else {
            prefix = b.prefix(8).reduce(0) { $0 << 8 | UInt64($1) }
            isIPv4 = false
        }
    }
}
