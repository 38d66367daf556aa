/// The hand-over: an established connection (accepted, or past its TLS opening) is announced with
/// `megaphone_connect` to one controller, which `ControllerSet` picks by the `balance` policy.
///
/// That controller is the connection's owner until a get_data names another process (the session
/// it starts): so `tcp_closed` before the first get_data goes to it, a node-down of its node closes
/// the connection, and the connection counts in its node's `SessionCounts`, which `least_sessions`
/// reads. It costs no byte in the slot: `owner` was empty until the first get_data before.
extension Reactor {
    func announce(_ fd: CInt, peer: SocketAddress, local: SocketAddress, transport: Transport, now: Int64,
                  config: ReactorConfig) {
        let id = table[fd].connID
        guard let controller = config.controllers.choose() else {
            // The last controller left between the accept and now; the listeners are closing.
            closeConnection(fd, reason: .nodeDown, notify: nil)
            return
        }
        table[fd].owner = controller
        sessions.added(node: controller.node)
        unclaimed.insert(id)
        opening.watchHeader(id, now: now, config: config)
        watchAnnouncement(id, now: now, config: config)
        emit(to: controller, .connected(connID: id, peer: peer, local: local, transport: transport))
    }

    /// get_data: `owner` takes the connection (again); its session count follows it to its node.
    func claim(_ fd: CInt, by owner: PidRef) {
        let id = table[fd].connID
        if !unclaimed.isEmpty { unclaimed.remove(id) }
        let previous = table[fd].owner
        if previous.isNone {
            sessions.added(node: owner.node)
        } else {
            sessions.moved(from: previous.node, to: owner.node)
        }
        table[fd].owner = owner
    }
}
