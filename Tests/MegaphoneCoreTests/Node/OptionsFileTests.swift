import Testing

@testable import MegaphoneCore

struct OptionsFileTests {
    @Test func optionsBecomeArgumentsInOrder() throws {
        let file = try OptionsFile(parsing: """
            # the node's options
            log-level = debug

              threads=2
            metrics-listen = "127.0.0.1:9464"
            host = 'example.org'
            """)
        #expect(file.arguments == ["--log-level", "debug", "--threads", "2", "--metrics-listen", "127.0.0.1:9464",
                                   "--host", "example.org"])
        #expect(file["threads"] == "2")
        #expect(file["cookie"] == nil)
        #expect(file.entries.map(\.line) == [2, 4, 5, 6])
    }

    @Test func anEmptyFileSetsNothing() throws {
        #expect(try OptionsFile(parsing: "").entries.isEmpty)
        #expect(try OptionsFile(parsing: "# nothing\n\n").entries.isEmpty)
    }

    @Test(arguments: [
        ("log-level debug", "f:1: expected `option = value`"),
        ("--threads = 2", "f:1: `--threads` is not an option name (write it as on the command line, without --)"),
        ("Log-Level = info", "f:1: `Log-Level` is not an option name (write it as on the command line, without --)"),
        (" = 3", "f:1: `` is not an option name (write it as on the command line, without --)"),
        ("config = /etc/other.conf", "f:1: an options file cannot name another one"),
        ("threads = 1\n# again\nthreads = 2", "f:3: `threads` is set already on line 1"),
    ])
    func badLinesSayWhereAndWhy(text: String, message: String) {
        #expect(throws: OptionsFile.ParseError(description: message)) {
            try OptionsFile(parsing: text, path: "f")
        }
    }

    @Test func aMissingFileIsAClearError() {
        #expect(throws: OptionsFile.ParseError(description: "cannot read options file /nonexistent/m.conf: No such file or directory")) {
            try OptionsFile(contentsOf: "/nonexistent/m.conf")
        }
    }
}
