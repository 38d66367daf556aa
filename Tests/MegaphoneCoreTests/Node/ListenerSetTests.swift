import Testing

@testable import MegaphoneCore

#if canImport(Glibc)
import Glibc
#endif

/// The listener bookkeeping of repeated `start`s, without a node: real sockets on loopback.
struct ListenerSetTests {
    func spec(_ port: UInt16 = 0) -> ListenerSpec {
        ListenerSpec(transport: .tcp, ip: .loopbackIPv4, port: port)
    }

    @Test func aRepeatedStartKeepsItsListenersAndTheirPorts() throws {
        var set = ListenerSet()
        let first = try set.replace(with: [spec()])
        #expect(first.added.count == 1 && first.removed.isEmpty)
        let bound = set.bound([spec()])
        #expect(bound.count == 1 && bound[0].port != 0)
        // The same start again: nothing to tell the reactors, the same port.
        let again = try set.replace(with: [spec()])
        #expect(again.added.isEmpty && again.removed.isEmpty)
        #expect(set.bound([spec()]) == bound)
    }

    @Test func aListenerLeftOutIsClosedAndOneAskedForAgainIsTakenBack() throws {
        var set = ListenerSet()
        let first = try set.replace(with: [spec()])
        let listener = try #require(first.added.first)
        let port = listener.bound.port
        let dropped = try set.replace(with: [])
        #expect(dropped.removed.count == 1 && dropped.removed[0] === listener)
        #expect(set.bound([spec()]).isEmpty)
        // A reactor still holds it (here: `listener`), so its port is still bound: asking for the
        // same listener again takes the same socket (and port) back instead of opening another.
        let back = try set.replace(with: [spec()])
        #expect(back.added.count == 1 && back.added[0] === listener)
        #expect(set.bound([spec()]).map(\.port) == [port])
    }

    @Test func aListenerThatCannotOpenChangesNothing() throws {
        var set = ListenerSet()
        let kept = try #require(try set.replace(with: [spec()]).added.first)
        // A port taken by a socket outside the set.
        let squatter = try Listener(spec())
        let taken = spec(squatter.bound.port)
        #expect(throws: ListenerSet.OpenFailure.self) { try set.replace(with: [spec(), taken]) }
        do {
            _ = try set.replace(with: [taken])
        } catch {
            #expect(error.spec == taken)
            #expect(error.error.errno == EADDRINUSE)
        }
        // The failed starts left the set as it was.
        #expect(set.bound([spec()]) == [kept.bound])
        let closed = set.closeAll()
        #expect(closed.count == 1 && closed[0] === kept)
        #expect(set.bound([spec()]).isEmpty)
    }
}
