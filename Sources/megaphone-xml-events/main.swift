// megaphone-xml-events: the events Megaphone's XML stream parser gives for whole files, for the
// differential test against ejabberd's fxml_stream (erlang_src/test/megaphone_xml_diff_tests.erl).
//
// For each FILE it writes one record to stdout: a 4-byte big-endian length, then the
// term_to_binary bytes of the list of events. Before that it parses the file split in two at every
// byte boundary (256 of them for files over 2 KB) and byte by byte, and exits 3 if any split
// gives other events than the whole.
import Foundation
import MegaphoneXML

func events(_ bytes: [UInt8], chunks: [Range<Int>], limits: XMLStreamLimits) -> [XMLStreamEvent] {
    var parser = XMLStreamParser(reportsStreamCData: true)
    var out: [XMLStreamEvent] = []
    func add(_ e: XMLStreamEvent) {
        if case .streamCData(let more) = e, case .streamCData(let text)? = out.last {
            out[out.count - 1] = .streamCData(text + more)
        } else {
            out.append(e)
        }
    }
    bytes.withUnsafeBytes { all in
        for chunk in chunks {
            var at = chunk.lowerBound
            while true {
                let (used, event) = parser.feed(UnsafeRawBufferPointer(rebasing: all[at..<chunk.upperBound]), limits: limits)
                at += used
                guard let event else { break }
                add(event)
                if case .error = event { return }
            }
        }
        if let e = parser.flushStreamCData() { add(e) }
    }
    return out
}

func record(_ list: [XMLStreamEvent]) -> [UInt8] {
    var body: [UInt8] = [131]
    if list.isEmpty {
        body.append(106)
    } else {
        body.append(108)
        let n = UInt32(list.count)
        body += [UInt8(n >> 24), UInt8(n >> 16 & 0xFF), UInt8(n >> 8 & 0xFF), UInt8(n & 0xFF)]
        for e in list { ExternalTermFormat.encode(e, into: &body) }
        body.append(106)
    }
    let n = UInt32(body.count)
    return [UInt8(n >> 24), UInt8(n >> 16 & 0xFF), UInt8(n >> 8 & 0xFF), UInt8(n & 0xFF)] + body
}

var args = Array(CommandLine.arguments.dropFirst())
if args.first == "--throughput" {
    // Parser speed (bench/parser_throughput): every FILE parsed whole, repeatedly, for ~2 s.
    let files = args.dropFirst().compactMap { FileManager.default.contents(atPath: $0).map { [UInt8]($0) } }
    let total = files.reduce(0) { $0 + $1.count }
    guard total > 0 else { exit(2) }
    let clock = ContinuousClock()
    var rounds = 0
    var elements = 0
    let start = clock.now
    while clock.now - start < .seconds(2) {
        for f in files {
            // As the node does: parse, then encode each event for the session.
            var payload: [UInt8] = []
            for e in events(f, chunks: [0..<f.count], limits: XMLStreamLimits(maxStanzaSize: Int.max)) {
                if case .element = e { elements += 1 }
                payload.removeAll(keepingCapacity: true)
                ExternalTermFormat.encode(e, into: &payload)
            }
        }
        rounds += 1
    }
    let secs = Double((clock.now - start).components.attoseconds) / 1e18 + Double((clock.now - start).components.seconds)
    print(String(format: "%.1f MB/s, %.2f us per top-level element (%d bytes, %d elements per round, %d rounds)",
                 Double(total * rounds) / secs / 1e6, secs * 1e6 / Double(max(elements, 1)), total, elements / rounds, rounds))
    exit(0)
}
if args == ["--sizes"] {
    // What an idle stream's parser holds (bench/parser_idle_memory): the struct, inline in the
    // node's per-connection object; between stanzas nothing else but the shared namespace context.
    var parser = XMLStreamParser()
    let stream = Array("<stream:stream to='localhost' xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' version='1.0'><message to='bob@localhost' type='chat' id='a1'><body>hello there, how are you?</body></message>".utf8)
    var at = 0
    stream.withUnsafeBytes { all in
        while at < all.count {
            let (used, event) = parser.feed(UnsafeRawBufferPointer(rebasing: all[at...]), limits: XMLStreamLimits())
            at += used
            if event == nil { break }
        }
    }
    print("MegaphoneXML: parser state \(MemoryLayout<XMLStreamParser>.size) bytes; after a stream header and one message: idle = \(parser.isIdle), no buffer held")
    exit(0)
}
var limits = XMLStreamLimits(maxStanzaSize: Int.max, maxDepth: 10_000, maxAttributes: 10_000, maxNameLength: 1 << 20)
if let i = args.firstIndex(of: "--max-stanza-size"), i + 1 < args.count, let n = Int(args[i + 1]) {
    limits.maxStanzaSize = n
    args.removeSubrange(i...(i + 1))
}
guard !args.isEmpty else {
    FileHandle.standardError.write("usage: megaphone-xml-events [--max-stanza-size N] FILE...\n".data(using: .utf8)!)
    exit(2)
}
var output: [UInt8] = []
for path in args {
    guard let data = FileManager.default.contents(atPath: path) else {
        FileHandle.standardError.write("\(path): cannot read\n".data(using: .utf8)!)
        exit(2)
    }
    let bytes = [UInt8](data)
    let whole = events(bytes, chunks: [0..<bytes.count], limits: limits)
    // Every split point of files up to 2 KB; beyond, 256 spread evenly (a deeply nested file is
    // quadratic to check at every point, and the fuzz target checks splits too).
    let points = bytes.count <= 2048 ? Array(0...bytes.count)
        : (0...256).map { $0 * bytes.count / 256 }
    var splits: [[Range<Int>]] = points.map { [0..<$0, $0..<bytes.count] }
    splits.append((0..<bytes.count).map { $0..<($0 + 1) })
    for chunks in splits {
        let got = events(bytes, chunks: chunks, limits: limits)
        if got != whole {
            let at = chunks.count == 2 ? "split at byte \(chunks[0].upperBound)" : "fed byte by byte"
            let first = (0..<min(got.count, whole.count)).first { got[$0] != whole[$0] } ?? min(got.count, whole.count)
            FileHandle.standardError.write("""
                \(path): \(at) gives other events than the whole file (first difference at event \(first)):
                  split: \(first < got.count ? String(describing: got[first]) : "none")
                  whole: \(first < whole.count ? String(describing: whole[first]) : "none")

                """.data(using: .utf8)!)
            exit(3)
        }
    }
    output += record(whole)
}
FileHandle.standardOutput.write(Data(output))
