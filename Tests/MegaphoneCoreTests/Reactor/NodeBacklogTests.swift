import Testing

@testable import MegaphoneCore

struct NodeBacklogTests {
    @Test func marksAndClearsOneNodeAtATime() {
        let backlog = NodeBacklog()
        #expect(!backlog.isBehind(1) && backlog.count == 0)
        #expect(backlog.set(1, behind: true))
        #expect(!backlog.set(1, behind: true))
        #expect(backlog.isBehind(1) && !backlog.isBehind(2) && backlog.count == 1)
        #expect(backlog.set(2, behind: true) && backlog.count == 2)
        #expect(backlog.set(1, behind: false))
        #expect(!backlog.set(1, behind: false))
        #expect(!backlog.isBehind(1) && backlog.isBehind(2) && backlog.count == 1)
    }
}
