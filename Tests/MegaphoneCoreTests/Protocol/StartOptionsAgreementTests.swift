import Testing

@testable import MegaphoneCore

struct StartOptionsAgreementTests {
    let listener = ListenerSpec(transport: .tcp, ip: .anyIPv4, port: 5222)
    let tlsListener = ListenerSpec(transport: .tls, ip: .anyIPv4, port: 5223)

    @Test func theControllerNeedNotAgree() {
        var first = StartOptions()
        first.listeners = [listener]
        var second = first
        second.controller = PidRef(node: 2, num: 1, serial: 0, creation: 1)
        #expect(first.disagreements(with: second).isEmpty)
    }

    @Test func listenerOrderDoesNotMatter() {
        var first = StartOptions()
        first.listeners = [listener, tlsListener]
        var second = first
        second.listeners = [tlsListener, listener]
        #expect(first.disagreements(with: second).isEmpty)
    }

    @Test func everyNodeWideOptionIsNamed() {
        let first = StartOptions()
        var second = StartOptions()
        second.listeners = [listener]
        second.certfile = "/x.pem"
        second.maxConnections = 10
        second.parser = .parsed
        second.balance = .roundRobin
        second.hibernateAfterMillis = 1000
        second.connectionRatePerIP = ConnectionRate(count: 1, periodMillis: 1000)
        #expect(first.disagreements(with: second)
                == ["listen", "certfile", "max_connections", "connection_rate_per_ip", "parser", "hibernate_after", "balance"])
    }
}
