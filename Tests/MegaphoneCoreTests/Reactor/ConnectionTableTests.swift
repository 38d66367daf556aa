import Testing

@testable import MegaphoneCore

struct ConnectionTableTests {
    @Test func insertLookupRemove() {
        var table = ConnectionTable()
        let generation = table.insert(fd: 7, connID: 0x100)
        #expect(table.count == 1)
        #expect(table.fd(of: 0x100) == 7)
        #expect(table.contains(fd: 7))
        #expect(!table.contains(fd: 6))
        #expect(table[7].flags == [.writable])
        table[7].flags.insert(.armed)
        #expect(table[7].flags.contains(.armed))
        let removed = table.remove(fd: 7)
        #expect(removed?.connID == 0x100)
        #expect(table.fd(of: 0x100) == nil)
        #expect(!table.contains(fd: 7))
        #expect(table.remove(fd: 7) == nil)
        // A reused fd starts clean, under a new generation.
        let next = table.insert(fd: 7, connID: 0x200)
        #expect(next == generation &+ 1)
        #expect(!table[7].flags.contains(.armed))
    }

    @Test func growsForHighFDs() {
        var table = ConnectionTable()
        for fd in stride(from: CInt(3), to: 20_000, by: 997) {
            table.insert(fd: fd, connID: UInt64(fd) << 8)
        }
        #expect(table.count == 21)
        #expect(table.fd(of: UInt64(19_943) << 8) == 19_943)
        #expect(Set(table.liveFDs).count == 21)
    }

    @Test func openingKeepsItsStageAndListenerInOneByte() {
        #expect(MemoryLayout<ConnectionSlot.Opening>.size == 1)
        let stages: [ConnectionSlot.Opening.Stage] = [
            .established, .startTLS(headerAnswered: false), .startTLS(headerAnswered: true), .handshake,
        ]
        for transport in Transport.allCases {
            for stage in stages {
                var opening = ConnectionSlot.Opening(stage, listener: transport)
                #expect(opening.stage == stage)
                #expect(opening.listener == transport)
                for next in stages {
                    opening.stage = next
                    #expect(opening.stage == next)
                    #expect(opening.listener == transport, "a stage change keeps the listener")
                }
            }
        }
    }

    @Test func idleSlotIsSmall() {
        // DESIGN.md: no per-connection allocation while idle; the slot itself stays within a cache line.
        #expect(MemoryLayout<ConnectionSlot>.stride <= 64)
        // The AddressLimiter handle took padding, not a new word; a parsed connection's state
        // (issue 12) took one word.
        #expect(MemoryLayout<ConnectionSlot>.stride == 64)
    }
}
