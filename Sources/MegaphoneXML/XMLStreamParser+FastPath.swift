/// Runs of plain ASCII, taken whole: text, attribute values, names and the space between
/// attributes make up most of a stanza, and none of their bytes can end a token or need more
/// than appending. Anything else (markup, references, line ends, `]`, non-ASCII, the byte that
/// reaches `max_stanza_size`) goes through the byte-by-byte machine, which has the last word.
extension XMLStreamParser {
    /// Consumes a run starting at `start` in the current state; returns its length (0: none).
    mutating func fastRun(_ bytes: UnsafeRawBufferPointer, at start: Int, _ limits: XMLStreamLimits) -> Int {
        // The byte that reaches the limit is the slow path's, which fails there.
        let room = limits.maxStanzaSize - Int(sinceEvent) - 1
        guard room > 0 else { return 0 }
        let end = room >= bytes.count - start ? bytes.count : start + room
        var j = start
        switch lex {
        case .content:
            // A LF right after a CR is dropped (line-end normalisation): the slow path's.
            if afterCR && bytes[start] == 0x0A { return 0 }
            while j < end && Self.isPlainText(bytes[j]) { j += 1 }
            guard j > start else { return 0 }
            if depth >= 2 || reportsStreamCData {
                w.text.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[start..<j]))
            }
            afterCR = false
            brackets = 0
            if depth == 1 {
                sinceEvent = 0
                return j - start
            }
        case .attrValue:
            let work = w
            let quote = work.quote
            while j < end {
                let c = bytes[j]
                guard c != quote && Self.isPlainAttributeByte(c) else { break }
                j += 1
            }
            guard j > start else { return 0 }
            work.value.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[start..<j]))
            afterCR = false
        case .startTagName, .attrName, .endTagName:
            let work = w
            let current = lex == .startTagName ? work.tag.qname.count : work.token.count
            // An end tag's first character is checked as a name start by the slow path.
            guard current > 0 else { return 0 }
            let nameEnd = Swift.min(end, start + Swift.max(0, limits.maxNameLength - current))
            while j < nameEnd && Self.isASCIINameByte(bytes[j]) { j += 1 }
            guard j > start else { return 0 }
            let run = UnsafeRawBufferPointer(rebasing: bytes[start..<j])
            if lex == .startTagName { work.tag.qname.append(contentsOf: run) } else { work.token.append(contentsOf: run) }
        case .tagSpace:
            while j < end && (bytes[j] == 0x20 || bytes[j] == 0x0A || bytes[j] == 0x09 || bytes[j] == 0x0D) { j += 1 }
            guard j > start else { return 0 }
        default:
            return 0
        }
        let run = j - start
        sinceEvent = Int32(Swift.min(Int(Int32.max), Int(sinceEvent) + run))
        return run
    }

    /// Text that is appended as it is: printable ASCII but `<`, `&`, `]`, `>`; tab and LF.
    @inline(__always)
    static func isPlainText(_ c: UInt8) -> Bool {
        if c >= 0x20 {
            return c < 0x80 && c != 0x3C && c != 0x26 && c != 0x5D && c != 0x3E
        }
        return c == 0x0A || c == 0x09
    }

    /// Attribute value bytes kept as they are: printable ASCII but `<` and `&` (the quote is the
    /// caller's); whitespace other than space is normalised by the slow path.
    @inline(__always)
    static func isPlainAttributeByte(_ c: UInt8) -> Bool {
        c >= 0x20 && c < 0x80 && c != 0x3C && c != 0x26
    }

    @inline(__always)
    static func isASCIINameByte(_ c: UInt8) -> Bool {
        switch c {
        case 0x41...0x5A, 0x61...0x7A, 0x30...0x39, 0x5F, 0x3A, 0x2D, 0x2E: return true
        default: return false
        }
    }
}
