import Testing

@testable import MegaphoneLoad

struct StanzasTests {
    static let accounts = Accounts(userPrefix: "xb", passwordPrefix: "pw", domain: "localhost", resource: "r")

    @Test func base64MatchesRFC4648() {
        for (plain, encoded) in [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="),
                                 ("fooba", "Zm9vYmE="), ("foobar", "Zm9vYmFy")] {
            var out: [UInt8] = []
            Base64.encode(Array(plain.utf8), into: &out)
            #expect(String(decoding: out, as: UTF8.self) == encoded)
        }
    }

    @Test func whatComesFromOutsideIsEscaped() {
        let chat = Stanzas.chat(to: Array("a'b@x/<r>".utf8), body: Array("1 & 2 < 3 \"q\"".utf8))
        #expect(String(decoding: chat, as: UTF8.self) == "<message to='a&apos;b@x/&lt;r&gt;' type='chat'><body>"
            + "1 &amp; 2 &lt; 3 &quot;q&quot;</body></message>")
        #expect(String(decoding: Stanzas.iqResult(to: nil, id: Array("a&b".utf8)), as: UTF8.self)
            == "<iq type='result' id='a&amp;b'/>")
        #expect(String(decoding: Stanzas.ping(domain: Array("localhost".utf8), id: Array("mlp3".utf8)), as: UTF8.self)
            == "<iq type='get' to='localhost' id='mlp3'><ping xmlns='urn:xmpp:ping'/></iq>")
    }

    @Test func jidsOfTheRunAreRecognisedAndOthersAreNot() {
        let a = Self.accounts
        #expect(a.fullJID(12) == Array("xb12@localhost/r".utf8))
        #expect(a.isFullJID(Array("xb12@localhost/r".utf8), of: 12))
        for other in ["xb12@localhost/r2", "xb120@localhost/r", "xb1@localhost/r", "xb12@localhost", "xb12@localhostx/r",
                      "yb12@localhost/r", "xb@localhost/r", "xb12@localhost/"] {
            #expect(!a.isFullJID(Array(other.utf8), of: 12), "\(other)")
        }
        #expect(a.index(of: Array("xb7@localhost/r".utf8)) == 7)
        #expect(a.index(of: Array("xb7@localhost".utf8)) == 7)
        #expect(a.index(of: Array("alice@localhost/r".utf8)) == nil)
        #expect(a.index(of: Array("xb7x@localhost/r".utf8)) == nil)
        #expect(a.index(of: Array("xb99999999999999999999@localhost".utf8)) == nil)
    }

    @Test func vmRSSIsReadFromProcStatus() {
        #expect(ProcessMemory.vmRSS(in: Array("Name:\tx\nVmPeak:\t 9 kB\nVmRSS:\t   1234 kB\n".utf8)) == 1234)
        #expect(ProcessMemory.vmRSS(in: Array("Name:\tx\n".utf8)) == nil)
        #expect(ProcessMemory.residentKilobytes() > 0)
    }
}
