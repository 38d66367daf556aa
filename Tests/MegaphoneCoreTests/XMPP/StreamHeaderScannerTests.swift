import Testing

@testable import MegaphoneCore

struct StreamHeaderScannerTests {
    func scan(_ text: String) -> StreamHeaderScanner.Scan { StreamHeaderScanner.scan(Array(text.utf8)) }

    static let header = "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='example.com' version='1.0'>"

    @Test func aWholeHeaderWithItsLengthAndTo() {
        let text = "<?xml version='1.0'?>\n" + Self.header
        #expect(scan(text + "<auth/>") == .header(to: "example.com", length: text.utf8.count))
    }

    @Test func everyPrefixOfAHeaderNeedsMore() {
        let text = "  <?xml version='1.0'?>" + Self.header
        for n in 0..<text.utf8.count {
            #expect(scan(String(decoding: Array(text.utf8).prefix(n), as: UTF8.self)) == .needMore)
        }
    }

    @Test func aGreaterThanInsideAQuotedValueDoesNotEndTheTag() {
        let text = "<stream xmlns='http://etherx.jabber.org/streams' id='a>b'>"
        #expect(scan(text) == .header(to: nil, length: text.utf8.count))
    }

    @Test func otherBytesAreNotAHeader() {
        #expect(scan("GET / HTTP/1.1\r\n") == .notAHeader)
        #expect(scan("<html>") == .notAHeader)
        #expect(scan("<stream:stream xmlns:stream='urn:other'>") == .notAHeader)
        #expect(scan("<stream:stream xmlns:stream='http://etherx.jabber.org/streams'/>") == .notAHeader)
    }
}
