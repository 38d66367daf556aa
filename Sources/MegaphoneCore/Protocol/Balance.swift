/// `{balance, round_robin | least_sessions}`: which of several controllers (one per ejabberd node of
/// a cluster) hears of a new connection.
///
/// `least_sessions` is the default: sessions live for hours, so what matters is how many each
/// ejabberd node holds, not how many logins it was given. After an ejabberd node restarts (or joins)
/// it holds none; `least_sessions` gives it the new logins until it holds as many as the others,
/// whereas `round_robin` would keep the imbalance for as long as the old sessions last.
public enum Balance: String, Sendable, Equatable, CaseIterable {
    /// In turn, whatever each controller holds.
    case roundRobin = "round_robin"
    /// The controller whose node owns the fewest open connections of this node; ties in turn.
    case leastSessions = "least_sessions"
}
