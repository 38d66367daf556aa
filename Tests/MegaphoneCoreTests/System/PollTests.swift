import Testing

@testable import MegaphoneCore

#if canImport(Glibc)
import Glibc
#endif

struct PollTests {
    /// An eventfd is readable once signalled and until drained: what the mailboxes and the request
    /// budget's wake-up rely on.
    @Test func pollSeesAnEventFDSignalledAndDrained() throws {
        let event = try EventFD()
        #expect(!Poll.isReadable(event.fd))
        event.signal()
        event.signal()
        var fds = [pollfd(fd: event.fd, events: Int16(POLLIN), revents: 0)]
        #expect(Poll.poll(&fds, timeout: 1_000) == 1)
        #expect(fds[0].revents & Int16(POLLIN) != 0)
        event.drain()
        #expect(!Poll.isReadable(event.fd))
    }

    @Test func aTimeoutWithNothingReadyIsZero() throws {
        let event = try EventFD()
        var fds = [pollfd(fd: event.fd, events: Int16(POLLIN), revents: 0)]
        #expect(Poll.poll(&fds, timeout: 10) == 0)
    }

    /// The acceptor's reserve fd.
    @Test func devNullOpens() {
        let fd = openDevNull()
        #expect(fd >= 0)
        if fd >= 0 { closeFD(fd) }
    }

    /// A room signal fires when a take brings the budget under its limit, and only then.
    @Test func aByteBudgetSignalsRoomOnlyWhenItCrossesItsLimit() throws {
        let room = try EventFD()
        let budget = ByteBudget(limit: 100, roomSignal: room)
        budget.added(60)
        budget.taken(10)
        #expect(!Poll.isReadable(room.fd))
        budget.added(80)       // 130: full
        budget.taken(20)       // 110: still full
        #expect(!Poll.isReadable(room.fd))
        budget.taken(20)       // 90: room again
        #expect(Poll.isReadable(room.fd))
        room.drain()
        budget.taken(50)       // 40: already under the limit, no second signal
        #expect(!Poll.isReadable(room.fd))
    }
}
