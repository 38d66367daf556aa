/// What the loop counts for `status`, `progress` and `login-done`.
struct Tally {
    var loggedIn = 0
    /// Logged in and not ended yet.
    var live = 0
    /// Logins that ended without the presence echo.
    var failed = 0
    /// Sessions that were logged in and then ended by the server or the network.
    var down = 0
    /// Server-initiated XEP-0199 pings answered.
    var pingsAnswered = 0
    var failureReasons: [String: Int] = [:]
    var downReasons: [String: Int] = [:]

    mutating func countFailure(_ reason: String) {
        failed += 1
        failureReasons[reason, default: 0] += 1
    }

    mutating func countDown(_ reason: String) {
        down += 1
        live -= 1
        downReasons[reason, default: 0] += 1
    }
}
