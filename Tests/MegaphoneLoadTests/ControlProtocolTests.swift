import Testing

@testable import MegaphoneLoad

/// The line protocol's two halves: commands parsed from stdin, event lines printed on stdout.
struct ControlProtocolTests {
    @Test func commandsAreParsedWithTheirArguments() {
        #expect(ControlCommand.parse("login") == .login)
        #expect(ControlCommand.parse("  status \r") == .status)
        #expect(ControlCommand.parse("close") == .close)
        #expect(ControlCommand.parse("send 12 7 tok-1") == .send(from: 12, to: 7, token: "tok-1"))
        #expect(ControlCommand.parse("ping 50") == .ping(inflight: 50))
        #expect(ControlCommand.parse("") == .blank)
        #expect(ControlCommand.parse(" \t") == .blank)
    }

    @Test func badInputIsAnErrorNotACrash() {
        #expect(ControlCommand.parse("logon") == .unknown("logon"))
        #expect(ControlCommand.parse("\u{0}\u{ff}") == .unknown("\u{0}\u{ff}"))
        #expect(ControlCommand.parse("login now") == .badArguments("login now"))
        #expect(ControlCommand.parse("send 1 2") == .badArguments("send 1 2"))
        #expect(ControlCommand.parse("send -1 2 t") == .badArguments("send -1 2 t"))
        #expect(ControlCommand.parse("send 1 99999999999999999999 t") == .badArguments("send 1 99999999999999999999 t"))
        #expect(ControlCommand.parse("ping 0") == .badArguments("ping 0"))
        #expect(ControlCommand.parse("ping x") == .badArguments("ping x"))
    }

    @Test func eventLinesAreExactlyWhatTheOrchestratorParses() {
        var t = Tally()
        t.loggedIn = 5
        t.live = 4
        t.failed = 2
        t.down = 1
        t.pingsAnswered = 3
        #expect(ControlLine.ready(pid: 42) == "ready pid=42")
        #expect(ControlLine.progress(seconds: 12.345, t, inFlight: 7, rssKB: 9000)
            == "progress t=12.3 logged_in=5 failed=2 down=1 in_flight=7 rss_kb=9000")
        #expect(ControlLine.loginDone(t, seconds: 3.5) == "login-done logged_in=5 failed=2 secs=3.500")
        #expect(ControlLine.failure(reason: "sasl-failure", count: 2) == "failure reason=sasl-failure count=2")
        #expect(ControlLine.status(t, rssKB: 10) == "status logged_in=5 live=4 failed=2 down=1 pings_answered=3 rss_kb=10")
        #expect(ControlLine.sendFailed(from: 3, token: "t", reason: "not-live") == "send-failed from=3 token=t reason=not-live")
        #expect(ControlLine.got(to: 2, from: "1", token: Array("a b%".utf8)) == "got to=2 from=1 token=a%20b%25")
        #expect(ControlLine.pingDone(ok: 200, failed: 0, seconds: 0.0504) == "ping-done ok=200 failed=0 secs=0.050")
        #expect(ControlLine.closed(3) == "closed n=3")
        #expect(ControlLine.error("unknown-command", "x y") == "error unknown-command x y")
    }

    @Test func decimalsRoundLikePrintf() {
        #expect(ControlLine.decimal(0, places: 1) == "0.0")
        #expect(ControlLine.decimal(1.96, places: 1) == "2.0")
        #expect(ControlLine.decimal(0.0004, places: 3) == "0.000")
        #expect(ControlLine.decimal(123.4567, places: 3) == "123.457")
        #expect(ControlLine.decimal(-0.26, places: 1) == "-0.3")
    }
}
