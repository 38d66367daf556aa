import Testing

@testable import MegaphoneCore

struct ControllerSetTests {
    let a = PidRef(node: 1, num: 10, serial: 0, creation: 1)
    let b = PidRef(node: 2, num: 20, serial: 0, creation: 1)
    let c = PidRef(node: 3, num: 30, serial: 0, creation: 1)

    @Test func roundRobinTakesEachControllerInTurn() {
        let set = ControllerSet(controllers: [a, b, c], balance: .roundRobin, sessions: SessionCounts())
        let picks = (0..<6).compactMap { _ in set.choose() }
        #expect(picks == [a, b, c, a, b, c])
    }

    @Test func roundRobinIgnoresLoad() {
        let sessions = SessionCounts()
        for _ in 0..<5 { sessions.added(node: a.node) }
        let set = ControllerSet(controllers: [a, b], balance: .roundRobin, sessions: sessions)
        #expect((0..<4).compactMap { _ in set.choose() } == [a, b, a, b])
    }

    @Test func leastSessionsFillsTheEmptierNodeFirst() {
        let sessions = SessionCounts()
        for _ in 0..<3 { sessions.added(node: a.node) }
        let set = ControllerSet(controllers: [a, b], balance: .leastSessions, sessions: sessions)
        // b has none: it takes the next three, as a reactor counts each announcement.
        for _ in 0..<3 {
            let pick = set.choose()
            #expect(pick == b)
            if let pick { sessions.added(node: pick.node) }
        }
        // Equal now: they alternate.
        var picks: [PidRef] = []
        for _ in 0..<4 {
            guard let pick = set.choose() else { break }
            picks.append(pick)
            sessions.added(node: pick.node)
        }
        #expect(Set(picks) == [a, b])
        #expect(sessions.count(node: a.node) == 5 && sessions.count(node: b.node) == 5)
    }

    @Test func leastSessionsBreaksTiesInTurn() {
        let set = ControllerSet(controllers: [a, b, c], balance: .leastSessions, sessions: SessionCounts())
        #expect((0..<3).compactMap { _ in set.choose() } == [a, b, c])
    }

    @Test func pickIsPure() {
        #expect(ControllerSet.pick(count: 3, balance: .leastSessions, sessions: [4, 1, 1], turn: 0) == 1)
        #expect(ControllerSet.pick(count: 3, balance: .leastSessions, sessions: [4, 1, 1], turn: 2) == 2)
        #expect(ControllerSet.pick(count: 3, balance: .leastSessions, sessions: [0, 1, 1], turn: 1) == 0)
        #expect(ControllerSet.pick(count: 3, balance: .roundRobin, sessions: [], turn: 7) == 1)
        #expect(ControllerSet.pick(count: 2, balance: .roundRobin, sessions: [], turn: -1) == 1)
    }

    @Test func noControllerNoChoice() {
        #expect(ControllerSet(controllers: [], balance: .leastSessions, sessions: SessionCounts()).choose() == nil)
        #expect(ControllerSet(controllers: [a], balance: .roundRobin, sessions: SessionCounts()).choose() == a)
    }

    @Test func sessionCountsFollowTheirOwners() {
        let sessions = SessionCounts()
        sessions.added(node: 1)
        sessions.added(node: 1)
        sessions.moved(from: 1, to: 2)
        #expect(sessions.counts(of: [1, 2, 3]) == [1, 1, 0])
        sessions.moved(from: 2, to: 2)
        #expect(sessions.count(node: 2) == 1)
        sessions.removed(node: 2)
        sessions.removed(node: 2)
        #expect(sessions.counts(of: [1, 2]) == [1, 0])
    }
}
