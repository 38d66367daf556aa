/// The byte-level state machine behind `XMLStreamParser.feed`.
extension XMLStreamParser {
    static let lt = UInt32(UInt8(ascii: "<")), gt = UInt32(UInt8(ascii: ">")), slash = UInt32(UInt8(ascii: "/"))
    static let amp = UInt32(UInt8(ascii: "&")), semicolon = UInt32(UInt8(ascii: ";")), eq = UInt32(UInt8(ascii: "="))
    static let bang = UInt32(UInt8(ascii: "!")), question = UInt32(UInt8(ascii: "?")), rsqb = UInt32(UInt8(ascii: "]"))
    static let lsqb = UInt32(UInt8(ascii: "[")), dash = UInt32(UInt8(ascii: "-")), hash = UInt32(UInt8(ascii: "#"))
    static let quot = UInt32(UInt8(ascii: "\"")), apos = UInt32(UInt8(ascii: "'"))
    static let cr: UInt32 = 0xD, lf: UInt32 = 0xA
    static let cdataOpening: [UInt8] = Array("CDATA[".utf8)

    /// One byte: decoded into a character (once its UTF-8 sequence is whole) and handed on.
    mutating func step(_ b: UInt8, _ limits: XMLStreamLimits) -> Outcome {
        switch utf8.push(b) {
        case .incomplete: return .more
        case .invalid: return .fail(.invalidToken)
        case .scalar(let c):
            guard XMLChar.isChar(c) else { return .fail(.invalidToken) }
            return handle(c, limits)
        }
    }

    mutating func handle(_ c: UInt32, _ limits: XMLStreamLimits) -> Outcome {
        switch lex {
        case .start, .afterBOM:
            if c == 0xFEFF && lex == .start { lex = .afterBOM; return .more }
            if c == Self.lt { w.matched = 1; lex = .lt; return .more }
            if XMLChar.isSpace(c) { lex = .prolog; return .more }
            return .fail(.invalidToken)
        case .prolog:
            if XMLChar.isSpace(c) { return .more }
            if c == Self.lt { w.matched = 0; lex = .lt; return .more }
            return .fail(.invalidToken)
        case .epilog:
            if XMLChar.isSpace(c) { return .more }
            guard c == Self.lt else { return .fail(.junkAfterRoot) }
            w.matched = 2
            lex = .lt
            return .more
        case .lt:
            return afterLT(c, limits)
        case .startTagName:
            if XMLChar.isName(c) { return appendName(c, to: &w.tag.qname, limits) }
            return afterName(c, limits)
        case .tagSpace:
            if XMLChar.isSpace(c) { return .more }
            if XMLChar.isNameStart(c) {
                guard w.tag.attributes.count < limits.maxAttributes else { return .fail(.tooBig) }
                w.token.removeAll(keepingCapacity: true)
                lex = .attrName
                return appendName(c, to: &w.token, limits)
            }
            return afterName(c, limits)
        case .afterAttrValue:
            if XMLChar.isSpace(c) { lex = .tagSpace; return .more }
            return afterName(c, limits)
        case .attrName:
            if XMLChar.isName(c) { return appendName(c, to: &w.token, limits) }
            if XMLChar.isSpace(c) { lex = .attrEq; return .more }
            if c == Self.eq { lex = .attrValueStart; return .more }
            return .fail(.invalidToken)
        case .attrEq:
            if XMLChar.isSpace(c) { return .more }
            if c == Self.eq { lex = .attrValueStart; return .more }
            return .fail(.invalidToken)
        case .attrValueStart:
            if XMLChar.isSpace(c) { return .more }
            guard c == Self.quot || c == Self.apos else { return .fail(.invalidToken) }
            w.quote = UInt8(c)
            w.value.removeAll(keepingCapacity: true)
            afterCR = false
            lex = .attrValue
            return .more
        case .attrValue:
            return attributeValue(c)
        case .emptySlash:
            guard c == Self.gt else { return .fail(.invalidToken) }
            return finishStartTag(selfClosing: true, limits)
        case .endTagName:
            if w.token.isEmpty ? XMLChar.isNameStart(c) : XMLChar.isName(c) { return appendName(c, to: &w.token, limits) }
            guard !w.token.isEmpty else { return .fail(.invalidToken) }
            if XMLChar.isSpace(c) { lex = .endTagSpace; return .more }
            if c == Self.gt { return finishEndTag() }
            return .fail(.invalidToken)
        case .endTagSpace:
            if XMLChar.isSpace(c) { return .more }
            if c == Self.gt { return finishEndTag() }
            return .fail(.invalidToken)
        case .bang:
            if c == Self.dash { return .fail(.restricted("comments are not allowed in XMPP")) }
            if c == Self.lsqb && depth >= 1 { w.matched = 0; lex = .cdataOpen; return .more }
            if c == UInt32(UInt8(ascii: "D")) && depth == 0 { return .fail(.restricted("DTDs are not allowed in XMPP")) }
            return .fail(.invalidToken)
        case .cdataOpen:
            guard c == UInt32(Self.cdataOpening[w.matched]) else { return .fail(.invalidToken) }
            w.matched += 1
            if w.matched == Self.cdataOpening.count { w.matched = 0; afterCR = false; lex = .cdata }
            return .more
        case .cdata:
            return cdataSection(c)
        case .content:
            return content(c)
        case .ref:
            return reference(c, limits)
        case .xmlDecl:
            return xmlDeclaration(c, limits)
        }
    }

    mutating func appendName(_ c: UInt32, to name: inout [UInt8], _ limits: XMLStreamLimits) -> Outcome {
        // The bound is on bytes: a name one byte short of it has no room for a 2- to 4-byte character.
        let width = c < 0x80 ? 1 : c < 0x800 ? 2 : c < 0x10000 ? 3 : 4
        guard name.count + width <= limits.maxNameLength else { return .fail(.tooBig) }
        UTF8Sequence.append(c, to: &name)
        return .more
    }

    /// After `<`: a start tag, an end tag, `<!`, or `<?` (the XML declaration at the very start).
    mutating func afterLT(_ c: UInt32, _ limits: XMLStreamLimits) -> Outcome {
        let atStart = w.matched == 1
        let afterRoot = w.matched == 2
        w.matched = 0
        if c == Self.slash {
            guard depth >= 1 else { return .fail(.invalidToken) }
            w.token.removeAll(keepingCapacity: true)
            lex = .endTagName
            return .more
        }
        if c == Self.bang { lex = .bang; return .more }
        if c == Self.question {
            guard atStart else { return .fail(.restricted("processing instructions are not allowed in XMPP")) }
            w.token.removeAll(keepingCapacity: true)
            lex = .xmlDecl
            return .more
        }
        guard XMLChar.isNameStart(c) else { return .fail(.invalidToken) }
        guard !afterRoot else { return .fail(.junkAfterRoot) }
        guard depth < limits.maxDepth else { return .fail(.tooBig) }
        w.tag.reset()
        lex = .startTagName
        return appendName(c, to: &w.tag.qname, limits)
    }

    /// Where a start tag's name or an attribute's value may end: space, `/`, `>`.
    mutating func afterName(_ c: UInt32, _ limits: XMLStreamLimits) -> Outcome {
        if XMLChar.isSpace(c) { lex = .tagSpace; return .more }
        if c == Self.slash { lex = .emptySlash; return .more }
        if c == Self.gt { return finishStartTag(selfClosing: false, limits) }
        return .fail(.invalidToken)
    }

    mutating func attributeValue(_ c: UInt32) -> Outcome {
        let wasCR = afterCR
        afterCR = false
        switch c {
        case UInt32(w.quote):
            w.tag.attributes.append(XMLAttribute(name: w.token, value: w.value))
            lex = .afterAttrValue
        case Self.lt:
            return .fail(.invalidToken)
        case Self.amp:
            w.token2.removeAll(keepingCapacity: true)
            w.refInAttribute = true
            lex = .ref
        case Self.cr:
            w.value.append(0x20)
            afterCR = true
        case Self.lf:
            if !wasCR { w.value.append(0x20) }
        case 0x9:
            w.value.append(0x20)
        default:
            UTF8Sequence.append(c, to: &w.value)
        }
        return .more
    }

    /// Character data: text of the open element, or stream-level text at depth 1.
    mutating func content(_ c: UInt32) -> Outcome {
        let wasCR = afterCR
        afterCR = false
        // expat holds a CR until the next character, and fxml's count restarts when it hands the
        // text over: with it.
        if wasCR && depth == 1 { sinceEvent = 0 }
        if c == Self.lt {
            brackets = 0
            if depth == 1 {
                if reportsStreamCData, let work, !work.text.isEmpty {
                    let text = work.text
                    work.text.removeAll()
                    afterCR = wasCR
                    return .eventBefore(.streamCData(text))
                }
            } else {
                flushText()
            }
            w.matched = 0
            lex = .lt
            return .more
        }
        // fxml counts max_stanza_size from its last event, and stream-level text is one: text
        // between stanzas never adds up (a whitespace flood is the shaper's business).
        if depth == 1 { sinceEvent = 0 }
        if c == Self.gt && brackets >= 2 { return .fail(.invalidToken) }
        brackets = c == Self.rsqb ? min(brackets + 1, 2) : 0
        if c == Self.amp {
            w.token2.removeAll(keepingCapacity: true)
            w.refInAttribute = false
            lex = .ref
            return .more
        }
        if c == Self.cr {
            afterCR = true
            appendText(Self.lf)
        } else if c == Self.lf {
            if !wasCR { appendText(c) }
        } else {
            appendText(c)
        }
        return .more
    }

    /// Text goes to the open element, or is kept as stream-level text when it is reported.
    mutating func appendText(_ c: UInt32) {
        if depth >= 2 || reportsStreamCData { UTF8Sequence.append(c, to: &w.text) }
    }

    /// Moves pending text into the open element's children, merged with text just before it.
    mutating func flushText() {
        guard let work, !work.text.isEmpty, !work.stack.isEmpty else { return }
        let last = work.stack.count - 1
        if case .cdata(var previous)? = work.stack[last].element.children.last {
            work.stack[last].element.children.removeLast()
            previous.append(contentsOf: work.text)
            work.stack[last].element.children.append(.cdata(previous))
        } else {
            work.stack[last].element.children.append(.cdata(work.text))
        }
        work.text.removeAll(keepingCapacity: true)
    }

    /// Inside `<![CDATA[ ... ]]>`: text as written, up to `]]>`.
    mutating func cdataSection(_ c: UInt32) -> Outcome {
        let wasCR = afterCR
        afterCR = false
        if c == Self.rsqb {
            if w.matched < 2 { w.matched += 1 } else { appendText(c) }
            return .more
        }
        if c == Self.gt && w.matched == 2 {
            w.matched = 0
            lex = .content
            return .more
        }
        for _ in 0..<w.matched { appendText(Self.rsqb) }
        w.matched = 0
        if c == Self.cr {
            afterCR = true
            appendText(Self.lf)
        } else if c != Self.lf || !wasCR {
            appendText(c)
        }
        return .more
    }

    /// `&name;` or `&#N;` / `&#xH;`: the five predefined entities and character references.
    mutating func reference(_ c: UInt32, _ limits: XMLStreamLimits) -> Outcome {
        guard c == Self.semicolon else {
            let ref = w.token2
            let ok: Bool
            if ref.isEmpty {
                ok = XMLChar.isNameStart(c) || c == Self.hash
            } else if ref[0] == UInt8(ascii: "#") {
                if ref.count == 1 {
                    ok = c == UInt32(UInt8(ascii: "x")) || (0x30...0x39).contains(c)
                } else if ref[1] == UInt8(ascii: "x") {
                    ok = (0x30...0x39).contains(c) || (0x41...0x46).contains(c) || (0x61...0x66).contains(c)
                } else {
                    ok = (0x30...0x39).contains(c)
                }
            } else {
                ok = XMLChar.isName(c)
            }
            guard ok else { return .fail(.invalidToken) }
            return appendName(c, to: &w.token2, limits)
        }
        let ref = w.token2
        guard !ref.isEmpty else { return .fail(.invalidToken) }
        var scalar: UInt32
        if ref[0] == UInt8(ascii: "#") {
            let hex = ref.count > 1 && ref[1] == UInt8(ascii: "x")
            let digits = ref.dropFirst(hex ? 2 : 1)
            guard !digits.isEmpty else { return .fail(.invalidToken) }
            scalar = 0
            for d in digits {
                let v: UInt32
                switch d {
                case 0x30...0x39: v = UInt32(d - 0x30)
                case 0x41...0x46: v = UInt32(d - 0x41 + 10)
                default: v = UInt32(d - 0x61 + 10)
                }
                scalar = scalar &* (hex ? 16 : 10) &+ v
                if scalar > 0x10FFFF { return .fail(.badCharRef) }
            }
            guard XMLChar.isChar(scalar) else { return .fail(.badCharRef) }
        } else {
            switch String(decoding: ref, as: UTF8.self) {
            case "lt": scalar = Self.lt
            case "gt": scalar = Self.gt
            case "amp": scalar = Self.amp
            case "quot": scalar = Self.quot
            case "apos": scalar = Self.apos
            default: return .fail(.restricted("entity references other than the predefined ones are not allowed in XMPP"))
            }
        }
        if w.refInAttribute {
            UTF8Sequence.append(scalar, to: &w.value)
            lex = .attrValue
        } else {
            brackets = 0
            appendText(scalar)
            // Stream-level text is an fxml event when the reference ends: its count restarts.
            if depth == 1 { sinceEvent = 0 }
            lex = .content
        }
        return .more
    }

    /// `<?xml version='1.0' encoding='UTF-8' standalone='yes'?>` at the very start; any other
    /// processing instruction is refused.
    mutating func xmlDeclaration(_ c: UInt32, _ limits: XMLStreamLimits) -> Outcome {
        let text = w.token
        if text.count < 3 {
            guard text.count == 0 ? XMLChar.isNameStart(c) : XMLChar.isName(c) else { return .fail(.invalidToken) }
            return appendName(c, to: &w.token, limits)
        }
        if text.count == 3 && text != Array("xml".utf8) || (text.count == 3 && !XMLChar.isSpace(c) && c != Self.question) {
            return .fail(.restricted("processing instructions are not allowed in XMPP"))
        }
        if c == Self.gt && text.last == UInt8(ascii: "?") {
            guard XMLDeclaration.isWellFormed(text.dropFirst(3).dropLast()) else { return .fail(.xmlDecl) }
            w.token.removeAll(keepingCapacity: true)
            lex = .prolog
            return .more
        }
        guard text.count < 256 else { return .fail(.xmlDecl) }
        UTF8Sequence.append(c, to: &w.token)
        return .more
    }
}

/// The XML declaration's pseudo-attributes: `version` (1.x), then optionally `encoding` and
/// `standalone`, in that order.
enum XMLDeclaration {
    static func isWellFormed(_ body: ArraySlice<UInt8>) -> Bool {
        var rest = body[...]
        var pairs: [(String, String)] = []
        while true {
            let before = rest.count
            rest = rest.drop { XMLChar.isSpace(UInt32($0)) }
            if rest.isEmpty { break }
            guard rest.count < before else { return false }
            guard let eq = rest.firstIndex(of: UInt8(ascii: "=")) else { return false }
            let name = String(decoding: rest[..<eq], as: UTF8.self).trimmingSpaces
            rest = rest[(eq + 1)...].drop { XMLChar.isSpace(UInt32($0)) }
            guard let q = rest.first, q == UInt8(ascii: "'") || q == UInt8(ascii: "\"") else { return false }
            rest = rest.dropFirst()
            guard let close = rest.firstIndex(of: q) else { return false }
            pairs.append((name, String(decoding: rest[..<close], as: UTF8.self)))
            rest = rest[(close + 1)...]
            if let next = rest.first, !XMLChar.isSpace(UInt32(next)) { return false }
        }
        guard let version = pairs.first, version.0 == "version", version.1.hasPrefix("1."),
              version.1.count > 2, version.1.dropFirst(2).allSatisfy({ $0.isASCII && $0.isNumber }) else { return false }
        var index = 1
        if index < pairs.count, pairs[index].0 == "encoding" {
            let e = pairs[index].1
            guard let first = e.first, first.isASCII && first.isLetter,
                  e.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "._-".contains($0)) }) else { return false }
            index += 1
        }
        if index < pairs.count, pairs[index].0 == "standalone" {
            guard pairs[index].1 == "yes" || pairs[index].1 == "no" else { return false }
            index += 1
        }
        return index == pairs.count
    }
}

extension String {
    var trimmingSpaces: String {
        String(self.drop { $0 == " " }.reversed().drop { $0 == " " }.reversed())
    }
}
