import Testing

@testable import MegaphoneCore

struct StreamOpeningTests {
    static let config = {
        var options = StartOptions()
        options.streamHeaderTimeoutMillis = 1_000
        return ReactorConfig(controller: .none, options: options)
    }()

    @Test func theHeaderWatchEndsWhenTheHeaderIsWholeAcrossChunks() {
        var opening = StreamOpening()
        opening.watchHeader(7, now: 0, config: Self.config)
        #expect(opening.headerWatch[7]?.deadline == 1_000)
        let bytes = Array(StreamHeaderScannerTests.header.utf8)
        opening.lookForHeader(7, in: Array(bytes[..<10]))
        #expect(opening.headerWatch[7]?.seen.count == 10)
        opening.lookForHeader(7, in: Array(bytes[10...]))
        #expect(opening.isEmpty)
    }

    @Test func theHeaderWatchEndsOnBytesThatAreNoHeaderOrTooMany() {
        var opening = StreamOpening()
        opening.watchHeader(1, now: 0, config: Self.config)
        opening.lookForHeader(1, in: Array("hello".utf8))
        #expect(opening.headerWatch[1] == nil)
        opening.watchHeader(2, now: 0, config: Self.config)
        opening.lookForHeader(2, in: Array(("<stream:stream a='" + String(repeating: "x", count: StreamOpening.headerWatchLimit)).utf8))
        #expect(opening.headerWatch[2] == nil)
    }

    @Test func noClockWithoutATimeout() {
        var opening = StreamOpening()
        opening.watchHeader(1, now: 0, config: ReactorConfig(controller: .none, options: StartOptions()))
        #expect(opening.isEmpty)
        #expect(opening.forget(1) == nil)
    }
}
