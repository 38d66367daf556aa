/// Where one session is. One byte in the session's slot.
enum SessionState: UInt8, Sendable {
    /// Not started yet.
    case waiting
    /// Non-blocking connect under way.
    case connecting
    /// First stream header sent; waiting for the server's header and features.
    case openingStream
    /// SASL PLAIN `<auth/>` sent; waiting for `<success/>`.
    case authenticating
    /// Stream restarted after SASL; waiting for the new features.
    case restarting
    /// Resource binding iq sent; waiting for its result.
    case binding
    /// Initial `<presence/>` sent; waiting for the server to send it back to our own full JID,
    /// which proves the session is routable.
    case announcing
    /// Logged in.
    case live
    /// Logged in, with one ping of a `ping` command waiting for its answer.
    case pinging
    /// The login failed; the socket is closed.
    case failed
    /// Logged in, then ended by the server or the network; the socket is closed.
    case down
    /// Closed by the `close` command (or the end of stdin).
    case closed

    /// Between the start of the connect and the presence echo.
    var isLoggingIn: Bool {
        switch self {
        case .connecting, .openingStream, .authenticating, .restarting, .binding, .announcing: return true
        default: return false
        }
    }

    /// Logged in and not ended.
    var isLive: Bool { self == .live || self == .pinging }

    /// Holds a socket.
    var isOpen: Bool { isLoggingIn || isLive }
}
