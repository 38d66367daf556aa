import Testing

@testable import MegaphoneCore

struct ControllerListTests {
    let a = PidRef(node: 1, num: 10, serial: 0, creation: 1)
    let a2 = PidRef(node: 1, num: 11, serial: 0, creation: 1)
    let b = PidRef(node: 2, num: 20, serial: 0, creation: 1)

    @Test func oneControllerPerNode() {
        var list = ControllerList()
        #expect(list.attach(a) == .added)
        #expect(list.attach(b) == .added)
        // The same node starts again (its module restarted): its entry is replaced in place.
        #expect(list.attach(a2) == .replaced(a))
        #expect(list.pids == [a2, b])
        #expect(list.hasOthers(than: 1) && list.hasOthers(than: 2))
    }

    @Test func aLoneControllerHasNoOthers() {
        var list = ControllerList()
        #expect(!list.hasOthers(than: 1))
        list.attach(a)
        #expect(!list.hasOthers(than: 1))
        #expect(list.hasOthers(than: 2))
    }

    @Test func detachRemovesOnlyThatNode() {
        var list = ControllerList()
        list.attach(a)
        list.attach(b)
        #expect(list.detach(node: 3) == nil)
        #expect(list.detach(node: 1) == a)
        #expect(list.pids == [b] && !list.contains(node: 1) && list.contains(node: 2))
        #expect(list.detach(node: 2) == b)
        #expect(list.isEmpty)
    }
}
