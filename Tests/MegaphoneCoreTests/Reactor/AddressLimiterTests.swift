import Testing

@testable import MegaphoneCore

struct AddressLimiterTests {
    let a = IPAddress(bytes: [10, 0, 0, 1])!
    let b = IPAddress(bytes: [10, 0, 0, 2])!

    func handle(_ admission: AddressLimiter.Admission) -> UInt32? {
        if case .admitted(let h) = admission { return h }
        return nil
    }

    @Test func nothingIsTrackedWithoutLimits() {
        let limiter = AddressLimiter()
        #expect(limiter.admit(a, now: 0, maxPerIP: .max, rate: nil) == .admitted(handle: 0))
        #expect(limiter.trackedAddresses == 0)
    }

    @Test func openConnectionsPerAddress() throws {
        let limiter = AddressLimiter()
        let h1 = try #require(handle(limiter.admit(a, now: 0, maxPerIP: 2, rate: nil)))
        let h2 = try #require(handle(limiter.admit(a, now: 0, maxPerIP: 2, rate: nil)))
        #expect(h1 == h2 && h1 != 0)
        #expect(limiter.admit(a, now: 0, maxPerIP: 2, rate: nil) == .refused(.tooMany))
        // Another address has its own count.
        let hb = try #require(handle(limiter.admit(b, now: 0, maxPerIP: 2, rate: nil)))
        limiter.release(h1, now: 0, rate: nil)
        #expect(limiter.connections(of: a) == 1)
        #expect(handle(limiter.admit(a, now: 0, maxPerIP: 2, rate: nil)) != nil)
        limiter.release(h1, now: 0, rate: nil)
        limiter.release(h2, now: 0, rate: nil)
        limiter.release(hb, now: 0, rate: nil)
        // Without a rate nothing is remembered once an address has no connection.
        #expect(limiter.trackedAddresses == 0)
    }

    @Test func ipv6CountsPerSlash64AndMappedIPv4AsIPv4() throws {
        let limiter = AddressLimiter()
        let x = IPAddress(bytes: [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 1] + [UInt8](repeating: 1, count: 8))!
        let y = IPAddress(bytes: [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 1] + [UInt8](repeating: 2, count: 8))!
        _ = try #require(handle(limiter.admit(x, now: 0, maxPerIP: 1, rate: nil)))
        #expect(limiter.admit(y, now: 0, maxPerIP: 1, rate: nil) == .refused(.tooMany))
        let mapped = IPAddress(bytes: [UInt8](repeating: 0, count: 10) + [0xFF, 0xFF, 10, 0, 0, 1])!
        _ = try #require(handle(limiter.admit(a, now: 0, maxPerIP: 1, rate: nil)))
        #expect(limiter.admit(mapped, now: 0, maxPerIP: 1, rate: nil) == .refused(.tooMany))
    }

    @Test func tokenBucketRefillsOverThePeriod() throws {
        let limiter = AddressLimiter()
        let rate = ConnectionRate(count: 2, periodMillis: 1000)
        let h = try #require(handle(limiter.admit(a, now: 0, maxPerIP: .max, rate: rate)))
        limiter.release(h, now: 0, rate: rate)
        _ = try #require(handle(limiter.admit(a, now: 10, maxPerIP: .max, rate: rate)))
        #expect(limiter.admit(a, now: 20, maxPerIP: .max, rate: rate) == .refused(.tooFast))
        // Half a period gives one token back.
        #expect(handle(limiter.admit(a, now: 520, maxPerIP: .max, rate: rate)) != nil)
        #expect(limiter.admit(a, now: 530, maxPerIP: .max, rate: rate) == .refused(.tooFast))
        // Refused attempts cost nothing more than the token they did not get.
        #expect(handle(limiter.admit(a, now: 1100, maxPerIP: .max, rate: rate)) != nil)
    }

    @Test func idleBucketsAreCappedWhateverTheSpreadOfAddresses() {
        let limiter = AddressLimiter(maxIdleEntries: 100)
        let rate = ConnectionRate(count: 5, periodMillis: 60_000)
        // 10,000 distinct addresses connect once and leave, all within one period: their buckets are
        // not full again yet, but at most 100 are remembered.
        for i in 0..<10_000 {
            let ip = IPAddress(bytes: [11, UInt8(i >> 16 & 0xFF), UInt8(i >> 8 & 0xFF), UInt8(i & 0xFF)])!
            if case .admitted(let h) = limiter.admit(ip, now: Int64(i), maxPerIP: .max, rate: rate) {
                limiter.release(h, now: Int64(i), rate: rate)
            } else {
                Issue.record("a first connection was refused")
            }
            #expect(limiter.trackedAddresses <= 101)
        }
        // Once the period has passed, a sweep forgets the refilled buckets: only the newcomer's, one
        // token short, is left.
        let late = IPAddress(bytes: [12, 0, 0, 1])!
        if case .admitted(let h) = limiter.admit(late, now: 200_000, maxPerIP: .max, rate: rate) {
            limiter.release(h, now: 200_000, rate: rate)
        }
        #expect(limiter.trackedAddresses == 1)
    }
}
