import Testing

@testable import MegaphoneCore
@testable import MegaphoneXML

/// glibc's (malloc.h, which the Glibc module does not export): the heap bytes an object holds.
@_silgen_name("malloc_usable_size")
private func mallocUsableSize(_ pointer: UnsafeMutableRawPointer) -> Int

/// What an idle parsed connection costs beyond its slot (issue 12: ≤ 256 B per idle plain
/// connection in all): the parser holds no buffer between stanzas, and the per-connection object
/// stays within one small malloc chunk.
struct ParsedInputFootprintTests {
    static let stream = Array(("<stream:stream to='localhost' xmlns='jabber:client' "
        + "xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>"
        + "<message to='bob@localhost' type='chat' id='a1'><body>hello &amp; bye</body></message>").utf8)

    @Test func anIdleStreamHoldsNoBufferAndFitsASmallChunk() {
        let input = ParsedInput()
        input.shaper = ReadShaper(rate: 1_000_000, burst: 1_000_000, now: 0)
        var events: [XMLStreamEvent] = []
        Self.stream.withUnsafeBytes { all in
            var at = 0
            while at < all.count {
                let (used, event) = input.parser.feed(UnsafeRawBufferPointer(rebasing: all[at...]), limits: XMLStreamLimits())
                at += used
                guard let event else { break }
                events.append(event)
            }
        }
        #expect(events.count == 2)
        #expect(input.parser.isIdle)
        #expect(input.parser.work == nil && input.parser.rare == nil)
        // The usual header's namespace context is the one shared instance.
        #expect(input.parser.stream === StreamContext.client)
        #expect(MemoryLayout<XMLStreamParser>.size <= 48)
        let bytes = mallocUsableSize(Unmanaged.passUnretained(input).toOpaque())
        #expect(bytes <= 120, "ParsedInput takes \(bytes) bytes of heap")
    }
}
