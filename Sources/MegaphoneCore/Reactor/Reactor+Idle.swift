/// Idle sessions (issue 13): the node sees every byte a connection moves, so it can tell a session
/// it has been idle without waking it on a timer of its own. Every `hibernate_after` the reactor
/// sweeps its connections: one that moved no byte either way since the last sweep, and has not been
/// told yet, gets `{megaphone_idle, ConnId}` at its owner (mod_megaphone's session then hibernates,
/// see `megaphone_c2s`); any byte in or out makes it eligible again. So a session hears it once per
/// quiet spell, between `hibernate_after` and twice that after its last byte.
///
/// It costs no memory per connection: two bits of the slot's flags (`active`, `idleNotified`).
extension Reactor {
    /// Marks a connection as having moved bytes this sweep period.
    func markActive(_ fd: CInt) {
        if config?.hibernateAfterMillis != nil { table[fd].flags.insert(.active) }
    }

    func sweepIdle(now: Int64) {
        guard let period = config?.hibernateAfterMillis else { return }
        guard now >= nextIdleSweep else { return }
        nextIdleSweep = now + period
        for fd in table.liveFDs {
            let slot = table[fd]
            // An unclaimed connection's owner is the controller, not a session.
            guard slot.opening.stage == .established, !slot.owner.isNone,
                  slot.flags.isDisjoint(with: [.closing, .eofNotified]),
                  unclaimed.isEmpty || !unclaimed.contains(slot.connID) else { continue }
            if slot.flags.contains(.active) {
                table[fd].flags.remove([.active, .idleNotified])
            } else if !slot.flags.contains(.idleNotified) {
                table[fd].flags.insert(.idleNotified)
                counters.idleNotices.add(1, ordering: .relaxed)
                emit(to: slot.owner, .idle(connID: slot.connID))
            }
        }
    }
}
