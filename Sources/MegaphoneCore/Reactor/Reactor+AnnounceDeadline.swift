/// `announce_timeout`: a connection announced with `megaphone_connect` must be asked for data
/// (`get_data`) within this time, or it is closed (`announce_timeout` in stats' `closed`) and the
/// controller told `{tcp_closed, ConnId}`. Without it a connection announced to a controller that
/// died while its node stayed up (so no node-down closes it) would stay open forever, unread.
extension Reactor {
    /// Starts the clock of a connection that is being announced, if `announce_timeout` is set.
    func watchAnnouncement(_ id: UInt64, now: Int64, config: ReactorConfig) {
        guard let timeout = config.announceTimeoutMillis else { return }
        announced[id] = now + timeout
    }

    /// Closes the announced connections nobody asked for data in time.
    func sweepAnnouncements(now: Int64) {
        for (id, deadline) in announced where deadline <= now {
            announced[id] = nil
            guard let fd = table.fd(of: id), table[fd].opening.stage == .established else { continue }
            logger.debug("Announced connection never asked for data", metadata: ["connection.id": "\(id)"])
            closeConnection(fd, reason: .announceTimeout, notify: .closed(connID: id))
        }
    }
}
