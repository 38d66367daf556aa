/// What happens to a client socket once its connection has closed (see `LingeringSockets`).
extension Reactor {
    /// Closes `fd`, whose connection has just left the table, or hands it to `lingering` so that the
    /// client reads what was written last instead of a reset.
    ///
    /// At once when lingering protects nothing: the socket failed (`client_error`), the node that
    /// owned it is gone (nothing of its was written; and a mass close frees fds for the reconnects),
    /// or it never finished TLS (nothing of ours to read but an alert).
    func retire(_ fd: CInt, reason: CloseReason) {
        switch reason {
        case .clientError, .nodeDown, .tlsError, .handshakeTimeout, .handshakeLimit:
            // close() also takes the fd out of the epoll set: it was never dup'ed.
            closeFD(fd)
        default:
            lingering.begin(fd, epfd: epfd, data: Token.lingering(fd), now: monotonicMillis(), scratch: scratch)
        }
    }
}
