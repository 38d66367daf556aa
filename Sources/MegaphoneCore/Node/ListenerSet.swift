/// The listeners the last `start` asked for, kept across repeated starts.
///
/// A repeated `start` keeps a listener it names again (same socket, same port, also for port 0), opens
/// the new ones and closes the others; if one fails to open, nothing changes. A listener it closed
/// lives on while a reactor still holds it (the socket closes with the last reference), so a `start`
/// that asks for it again takes it back: binding a second socket to its port would fail with
/// EADDRINUSE until the reactors let go, as when the controller's node reconnects and starts us again
/// at once (seen in the fault run).
///
/// Owned by the distribution thread; the reactors learn the changes through their commands.
struct ListenerSet {
    private struct WeakListener {
        weak var listener: Listener?
    }

    /// What the reactors must be told after `replace(with:)`, in this order: remove, then add (each
    /// reactor runs its commands in order, so a listener taken back is removed and then added again).
    struct Change {
        var added: [Listener]
        var removed: [Listener]
    }

    /// A listener that could not be opened; nothing was changed.
    struct OpenFailure: Error {
        var spec: ListenerSpec
        var error: SystemError
    }

    private var open: [ListenerSpec: Listener] = [:]
    private var closing: [ListenerSpec: WeakListener] = [:]

    /// Opens, keeps or takes back the listeners of `specs` and closes the rest.
    mutating func replace(with specs: [ListenerSpec]) throws(OpenFailure) -> Change {
        var next: [ListenerSpec: Listener] = [:]
        var added: [Listener] = []
        closing = closing.filter { $0.value.listener != nil }
        for spec in specs where next[spec] == nil {
            if let existing = open[spec] {
                next[spec] = existing
            } else if let closed = closing[spec]?.listener {
                next[spec] = closed
                added.append(closed)
            } else {
                do {
                    let listener = try Listener(spec)
                    next[spec] = listener
                    added.append(listener)
                } catch {
                    throw OpenFailure(spec: spec, error: error)
                }
            }
        }
        let removed = open.filter { next[$0.key] == nil }
        for (spec, listener) in removed { closing[spec] = WeakListener(listener: listener) }
        open = next
        return Change(added: added, removed: Array(removed.values))
    }

    /// Closes every listener (shutdown, or the controller's node is gone); returns them for the
    /// reactors to let go of.
    mutating func closeAll() -> [Listener] {
        for (spec, listener) in open { closing[spec] = WeakListener(listener: listener) }
        defer { open = [:] }
        return Array(open.values)
    }

    /// What is bound for `specs`, in their order (the real ports of port-0 listeners).
    func bound(_ specs: [ListenerSpec]) -> [ListenerSpec] {
        specs.compactMap { open[$0]?.bound }
    }
}
