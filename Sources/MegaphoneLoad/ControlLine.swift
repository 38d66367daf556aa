/// The lines megaphone-load prints on stdout, one per event: a word, then `key=value` pairs
/// separated by single spaces. Values never hold spaces: free text (a chat body) goes through
/// `word(_:)`.
enum ControlLine {
    static func ready(pid: Int) -> String { "ready pid=\(pid)" }

    static func progress(seconds: Double, _ t: Tally, inFlight: Int, rssKB: Int) -> String {
        "progress t=\(decimal(seconds, places: 1)) logged_in=\(t.loggedIn) failed=\(t.failed) down=\(t.down) "
            + "in_flight=\(inFlight) rss_kb=\(rssKB)"
    }

    static func failure(reason: String, count: Int) -> String { "failure reason=\(reason) count=\(count)" }

    static func loginDone(_ t: Tally, seconds: Double) -> String {
        "login-done logged_in=\(t.loggedIn) failed=\(t.failed) secs=\(decimal(seconds, places: 3))"
    }

    static func status(_ t: Tally, rssKB: Int) -> String {
        "status logged_in=\(t.loggedIn) live=\(t.live) failed=\(t.failed) down=\(t.down) "
            + "pings_answered=\(t.pingsAnswered) rss_kb=\(rssKB)"
    }

    static func sendFailed(from: Int, token: String, reason: String) -> String {
        "send-failed from=\(from) token=\(token) reason=\(reason)"
    }

    static func got(to: Int, from: String, token: [UInt8]) -> String {
        "got to=\(to) from=\(from) token=\(word(token))"
    }

    static func pingDone(ok: Int, failed: Int, seconds: Double) -> String {
        "ping-done ok=\(ok) failed=\(failed) secs=\(decimal(seconds, places: 3))"
    }

    static func closed(_ n: Int) -> String { "closed n=\(n)" }

    static func error(_ what: String, _ text: String) -> String { "error \(what) \(text)" }

    /// Bytes as one word: `%`, controls, space and DEL become `%XX`, so a body from anyone cannot
    /// split or forge a line. A token sent by `send` (no spaces, no `%`) comes out as it went in.
    static func word(_ bytes: [UInt8]) -> String {
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count)
        let hex = Array("0123456789ABCDEF".utf8)
        for b in bytes {
            if b <= 0x20 || b == 0x7F || b == UInt8(ascii: "%") {
                out += [UInt8(ascii: "%"), hex[Int(b >> 4)], hex[Int(b & 15)]]
            } else {
                out.append(b)
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// `x` with `places` decimals, rounded half up (no Foundation in this module).
    static func decimal(_ x: Double, places: Int) -> String {
        guard x.isFinite else { return "0" }
        var scale = 1
        for _ in 0..<places { scale *= 10 }
        let scaled = Int((abs(x) * Double(scale)).rounded())
        let whole = scaled / scale
        var frac = String(scaled % scale)
        while frac.count < places { frac = "0" + frac }
        let sign = x < 0 && scaled != 0 ? "-" : ""
        return places == 0 ? "\(sign)\(whole)" : "\(sign)\(whole).\(frac)"
    }
}
