/// Why the C node could not start or lost a link. Each case is one line for an operator.
public enum NodeError: Error, CustomStringConvertible, Equatable, Sendable {
    case initFailed(erlErrno: CInt)
    case distPortInUse(port: Int)
    case listenFailed(erlErrno: CInt)
    case epmdUnreachable(port: Int)
    case nameInUse(name: String)
    case publishFailed(erlErrno: CInt)

    public var description: String {
        switch self {
        case .initFailed(let e): "cannot initialise the C node (\(ErrnoName.erlang(e)))"
        case .distPortInUse(let port): "distribution port \(port) is already in use"
        case .listenFailed(let e): "cannot open the distribution port (\(ErrnoName.erlang(e)))"
        case .epmdUnreachable(let port): "epmd is not reachable on port \(port) and could not be started"
        case .nameInUse(let name): "the node name \(name) is already registered in epmd"
        case .publishFailed(let e): "cannot register with epmd (\(ErrnoName.erlang(e)))"
        }
    }
}
