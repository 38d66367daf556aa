import Testing

@testable import MegaphoneCore

struct HandshakeLimiterTests {
    /// Two addresses of one IPv6 /64 share one count, as for `max_connections_per_ip`: a client
    /// cannot take a fresh address of its /64 for every unfinished handshake.
    @Test func ipv6CountsPerSlash64() throws {
        let limiter = HandshakeLimiter()
        let prefix: [UInt8] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 1]
        let x = try #require(IPAddress(bytes: prefix + [UInt8](repeating: 1, count: 8)))
        let y = try #require(IPAddress(bytes: prefix + [UInt8](repeating: 2, count: 8)))
        let other = try #require(IPAddress(bytes: [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 2] + [UInt8](repeating: 1, count: 8)))
        #expect(limiter.acquire(x, max: 2))
        #expect(limiter.acquire(y, max: 2))
        #expect(!limiter.acquire(y, max: 2))
        #expect(limiter.count(x) == 2)
        // The next /64 has its own count.
        #expect(limiter.acquire(other, max: 2))
        limiter.release(x)
        #expect(limiter.acquire(y, max: 2))
    }

    @Test func mappedIPv4CountsAsIPv4() throws {
        let limiter = HandshakeLimiter()
        let v4 = try #require(IPAddress(bytes: [10, 0, 0, 1]))
        let mapped = try #require(IPAddress(bytes: [UInt8](repeating: 0, count: 10) + [0xFF, 0xFF, 10, 0, 0, 1]))
        #expect(limiter.acquire(v4, max: 1))
        #expect(!limiter.acquire(mapped, max: 1))
        limiter.release(mapped)
        #expect(limiter.count(v4) == 0)
    }
}
