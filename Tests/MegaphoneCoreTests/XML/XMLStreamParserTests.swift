import Testing

@testable import MegaphoneXML

struct XMLStreamParserTests {
    static let header = "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='example.com' version='1.0'>"
    static let headerAttributes = [
        attr("xmlns", "jabber:client"), attr("xmlns:stream", "http://etherx.jabber.org/streams"),
        attr("to", "example.com"), attr("version", "1.0"),
    ]

    static func attr(_ name: String, _ value: String) -> XMLAttribute {
        XMLAttribute(name: Array(name.utf8), value: Array(value.utf8))
    }

    static func el(_ name: String, _ attributes: [XMLAttribute] = [], _ children: [XMLNode] = []) -> XMLElement {
        XMLElement(name: Array(name.utf8), attributes: attributes, children: children)
    }

    static func text(_ s: String) -> XMLNode { .cdata(Array(s.utf8)) }

    /// Every event `bytes` give in one buffer, fed until no event comes (and past an error once).
    func events(_ bytes: [UInt8], limits: XMLStreamLimits = XMLStreamLimits(), reportsStreamCData: Bool = false)
        -> [XMLStreamEvent]
    {
        var parser = XMLStreamParser(reportsStreamCData: reportsStreamCData)
        var out: [XMLStreamEvent] = []
        bytes.withUnsafeBytes { all in
            var at = 0
            while true {
                let (used, event) = parser.feed(UnsafeRawBufferPointer(rebasing: all[at...]), limits: limits)
                at += used
                guard let event else { break }
                out.append(event)
                if case .error = event { break }
            }
        }
        if let e = parser.flushStreamCData() { out.append(e) }
        return out
    }

    func events(_ text: String, limits: XMLStreamLimits = XMLStreamLimits(), reportsStreamCData: Bool = false)
        -> [XMLStreamEvent]
    {
        events(Array(text.utf8), limits: limits, reportsStreamCData: reportsStreamCData)
    }

    /// The events of the stream header followed by `stanzas`, less the header's.
    func stanzas(_ text: String, limits: XMLStreamLimits = XMLStreamLimits()) -> [XMLStreamEvent] {
        Array(events(Self.header + text, limits: limits).dropFirst())
    }

    func stanzas(_ bytes: [UInt8]) -> [XMLStreamEvent] {
        Array(events(Array(Self.header.utf8) + bytes).dropFirst())
    }

    // MARK: - Stream header

    @Test func theStreamHeaderIsAnEventWithItsAttributesAsWritten() {
        #expect(events("<?xml version='1.0'?>\n" + Self.header)
                == [.streamStart(name: Array("stream:stream".utf8), attributes: Self.headerAttributes)])
    }

    @Test func namespaceDeclarationsComeFirstInTheHeader() {
        let header = "<stream:stream to='example.com' xmlns:stream='http://etherx.jabber.org/streams' version='1.0' xmlns='jabber:client'>"
        #expect(events(header) == [.streamStart(name: Array("stream:stream".utf8), attributes: [
            Self.attr("xmlns:stream", "http://etherx.jabber.org/streams"), Self.attr("xmlns", "jabber:client"),
            Self.attr("to", "example.com"), Self.attr("version", "1.0"),
        ])])
    }

    @Test func theUsualHeaderInEitherOrderGivesTheSameStanzas() {
        let swapped = "<stream:stream xmlns:stream='http://etherx.jabber.org/streams' xmlns='jabber:client'>"
        let body = "<stream:features/><iq xmlns='jabber:client' id='1'/><query xmlns='jabber:iq:roster'/>"
        #expect(Array(events(swapped + body).dropFirst()) == stanzas(body))
    }

    @Test func theStreamEndIsAnEvent() {
        #expect(stanzas(" </stream:stream> ") == [.streamEnd(name: Array("stream:stream".utf8))])
    }

    @Test func aSelfClosedHeaderIsAStartThenAnEnd() {
        #expect(events("<stream:stream xmlns:stream='http://etherx.jabber.org/streams'/>") == [
            .streamStart(name: Array("stream:stream".utf8),
                         attributes: [Self.attr("xmlns:stream", "http://etherx.jabber.org/streams")]),
            .streamEnd(name: Array("stream:stream".utf8)),
        ])
    }

    // MARK: - Stanzas

    @Test func aMessageWithABodyAndEntities() {
        let got = stanzas("<message to='juliet@example.com' type='chat' id='a&amp;b'><body>1 &lt; 2 &amp;&amp; &quot;x&apos; &#65;&#x42;&#x1F600;</body></message>")
        #expect(got == [.element(Self.el("message",
            [Self.attr("to", "juliet@example.com"), Self.attr("type", "chat"), Self.attr("id", "a&b")],
            [.element(Self.el("body", [], [Self.text("1 < 2 && \"x' AB😀")]))]))])
    }

    @Test func cdataSectionsMergeWithTheTextAroundThem() {
        #expect(stanzas("<body>a<![CDATA[<b> & ]]]]><![CDATA[>]]>c</body>")
                == [.element(Self.el("body", [], [Self.text("a<b> & ]]>c")]))])
    }

    @Test func textAroundAChildStaysApart() {
        #expect(stanzas("<a>x<b/>y</a>") == [.element(Self.el("a", [], [Self.text("x"), .element(Self.el("b")), Self.text("y")]))])
    }

    @Test func lineEndsAreNormalisedInTextAndAttributes() {
        #expect(stanzas("<body a='1\r\n2\r3\n4\t5'>l1\r\nl2\rl3\nl4<![CDATA[c\r\nd]]></body>")
                == [.element(Self.el("body", [Self.attr("a", "1 2 3 4 5")], [Self.text("l1\nl2\nl3\nl4c\nd")]))])
    }

    @Test func aCharacterReferenceKeepsItsCarriageReturn() {
        #expect(stanzas("<body a='&#13;&#10;'>&#xD;&#xA;</body>")
                == [.element(Self.el("body", [Self.attr("a", "\r\n")], [Self.text("\r\n")]))])
    }

    // MARK: - Namespaces

    @Test func xmlnsEqualToTheParentsIsRemoved() {
        #expect(stanzas("<iq xmlns='jabber:client' id='1'><x xmlns='jabber:client'/></iq>")
                == [.element(Self.el("iq", [Self.attr("id", "1")], [.element(Self.el("x"))]))])
    }

    @Test func xmlnsIsKeptOrAddedWhereTheNamespaceChanges() {
        #expect(stanzas("<iq><query xmlns='jabber:iq:roster'><item/></query></iq>") == [.element(Self.el("iq", [], [
            .element(Self.el("query", [Self.attr("xmlns", "jabber:iq:roster")], [.element(Self.el("item"))])),
        ]))])
        // `item` is back in jabber:client below a query in jabber:iq:roster: it gets an xmlns.
        #expect(stanzas("<iq><q:query xmlns:q='jabber:iq:roster'><item/></q:query></iq>") == [.element(Self.el("iq", [], [
            .element(Self.el("query", [Self.attr("xmlns", "jabber:iq:roster"), Self.attr("xmlns:q", "jabber:iq:roster")],
                             [.element(Self.el("item", [Self.attr("xmlns", "jabber:client")]))])),
        ]))])
    }

    @Test func aPrefixedElementLosesItsPrefix() {
        #expect(stanzas("<sasl:auth xmlns:sasl='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>=</sasl:auth>")
                == [.element(Self.el("auth", [
                    Self.attr("xmlns", "urn:ietf:params:xml:ns:xmpp-sasl"),
                    Self.attr("xmlns:sasl", "urn:ietf:params:xml:ns:xmpp-sasl"), Self.attr("mechanism", "PLAIN"),
                ], [Self.text("=")]))])
    }

    @Test func streamFeaturesKeepTheirPrefix() {
        #expect(stanzas("<stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></stream:features>")
                == [.element(Self.el("stream:features", [], [
                    .element(Self.el("bind", [Self.attr("xmlns", "urn:ietf:params:xml:ns:xmpp-bind")])),
                ]))])
    }

    // MARK: - Errors

    func expectError(_ text: String, _ error: XMLStreamError, limits: XMLStreamLimits = XMLStreamLimits(),
                     sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(events(text, limits: limits).last == .error(error), sourceLocation: sourceLocation)
    }

    @Test func wellFormednessErrors() {
        expectError(Self.header + "<a><b></a>", .tagMismatch)
        expectError(Self.header + "</stream>", .tagMismatch)
        expectError(Self.header + "<x:y/>", .unboundPrefix)
        expectError(Self.header + "<iq x:a='1'/>", .unboundPrefix)
        expectError(Self.header + "<iq a='1' a='2'/>", .duplicateAttribute)
        expectError(Self.header + "<iq xmlns:p='u' xmlns:q='u' p:a='1' q:a='2'/>", .duplicateAttribute)
        expectError(Self.header + "<body>a]]>b</body>", .invalidToken)
        expectError(Self.header + "<body>&#0;</body>", .badCharRef)
        expectError(Self.header + "</stream:stream><iq/>", .junkAfterRoot)
    }

    @Test func badUTF8IsAnInvalidToken() {
        let header = Array(Self.header.utf8)
        for bad: [UInt8] in [[0xC3, 0x28], [0xC0, 0xAF], [0xED, 0xA0, 0x80], [0xF4, 0x90, 0x80, 0x80], [0xFF], [0x80]] {
            let got = events(header + Array("<body>".utf8) + bad + Array("</body>".utf8))
            #expect(got.last == .error(.invalidToken), "\(bad)")
        }
        #expect(stanzas([0x3C, 0x61, 0x3E, 0xC3, 0xA9, 0x3C, 0x2F, 0x61, 0x3E])
                == [.element(Self.el("a", [], [Self.text("é")]))])
    }

    @Test func whatXMPPForbidsIsRestricted() {
        expectError(Self.header + "<message><!-- hi --></message>", .restricted("comments are not allowed in XMPP"))
        expectError(Self.header + "<?php x?>", .restricted("processing instructions are not allowed in XMPP"))
        expectError("<?xml-stylesheet href='a'?>" + Self.header, .restricted("processing instructions are not allowed in XMPP"))
        expectError("<!DOCTYPE stream>" + Self.header, .restricted("DTDs are not allowed in XMPP"))
        expectError(Self.header + "<body>&nbsp;</body>",
                    .restricted("entity references other than the predefined ones are not allowed in XMPP"))
    }

    // The limits bind the stream header too: its 116 bytes, 4 attributes and 13-byte name.

    @Test func theStanzaSizeLimitIsTooBig() {
        let limits = XMLStreamLimits(maxStanzaSize: 150)
        #expect(stanzas("<body>\(String(repeating: "x", count: 100))</body>", limits: limits).count == 1)
        #expect(stanzas("<body>\(String(repeating: "x", count: 150))</body>", limits: limits) == [.error(.tooBig)])
        #expect(events(Self.header, limits: XMLStreamLimits(maxStanzaSize: 100)) == [.error(.tooBig)])
    }

    @Test func theDepthLimitIsTooBig() {
        let limits = XMLStreamLimits(maxDepth: 4)
        #expect(stanzas("<a><b><c/></b></a>", limits: limits).count == 1)
        #expect(stanzas("<a><b><c><d/></c></b></a>", limits: limits) == [.error(.tooBig)])
    }

    @Test func theAttributeAndNameLimitsAreTooBig() {
        let limits = XMLStreamLimits(maxAttributes: 4, maxNameLength: 13)
        #expect(stanzas("<abcdefghijklm a='1' b='2' c='3' d='4'/>", limits: limits).count == 1)
        #expect(stanzas("<a a='1' b='2' c='3' d='4' e='5'/>", limits: limits) == [.error(.tooBig)])
        #expect(stanzas("<abcdefghijklmn/>", limits: limits) == [.error(.tooBig)])
        #expect(stanzas("<a abcdefghijklmn='1'/>", limits: limits) == [.error(.tooBig)])
    }

    /// Regression (found by FuzzXMLStream): the bound was checked before appending a character, so
    /// a name one byte short of it took a multi-byte character and ended up to 3 bytes too long.
    @Test func theNameLimitCountsBytesOfMultiByteCharacters() {
        let limits = XMLStreamLimits(maxNameLength: 13)
        #expect(stanzas("<abcdefghijk\u{E9}/>", limits: limits).count == 1)
        #expect(stanzas("<abcdefghijkl\u{E9}/>", limits: limits) == [.error(.tooBig)])
        #expect(stanzas("<a abcdefghijk\u{20AC}='1'/>", limits: limits) == [.error(.tooBig)])
        #expect(stanzas("<body>&abcdefghijkl\u{E9};</body>", limits: limits) == [.error(.tooBig)])
    }

    @Test func afterAnErrorEveryFeedGivesTheSameErrorAndConsumesNothing() {
        var parser = XMLStreamParser()
        let bytes = Array((Self.header + "<a></b><iq/>").utf8)
        bytes.withUnsafeBytes { all in
            var at = 0
            var last: XMLStreamEvent?
            while true {
                let (used, event) = parser.feed(UnsafeRawBufferPointer(rebasing: all[at...]), limits: XMLStreamLimits())
                at += used
                last = event
                if case .error = event { break }
            }
            #expect(last == .error(.tagMismatch))
            #expect(parser.hasFailed)
            let (used, event) = parser.feed(UnsafeRawBufferPointer(rebasing: all[at...]), limits: XMLStreamLimits())
            #expect(used == 0)
            #expect(event == .error(.tagMismatch))
        }
    }

    // MARK: - Feeding

    @Test func feedStopsAfterEachEvent() {
        var parser = XMLStreamParser()
        let first = "<presence/>", second = "<iq id='2'/>"
        let bytes = Array((Self.header + first + second).utf8)
        bytes.withUnsafeBytes { all in
            let limits = XMLStreamLimits()
            let (n1, e1) = parser.feed(UnsafeRawBufferPointer(rebasing: all[...]), limits: limits)
            #expect(n1 == Self.header.utf8.count)
            #expect(e1 == .streamStart(name: Array("stream:stream".utf8), attributes: Self.headerAttributes))
            let (n2, e2) = parser.feed(UnsafeRawBufferPointer(rebasing: all[n1...]), limits: limits)
            #expect(n2 == first.utf8.count)
            #expect(e2 == .element(Self.el("presence")))
            let (n3, e3) = parser.feed(UnsafeRawBufferPointer(rebasing: all[(n1 + n2)...]), limits: limits)
            #expect(n3 == second.utf8.count)
            #expect(e3 == .element(Self.el("iq", [Self.attr("id", "2")])))
            let (n4, e4) = parser.feed(UnsafeRawBufferPointer(rebasing: all[(n1 + n2 + n3)...]), limits: limits)
            #expect(n4 == 0 && e4 == nil)
        }
    }

    @Test func aStanzaSplitAnywhereGivesTheSameEvents() {
        let bytes = Array((Self.header + "<message><body>caf\u{E9} &amp; <![CDATA[x]]></body></message>").utf8)
        let whole = events(bytes)
        for cut in 0...bytes.count {
            var parser = XMLStreamParser()
            var got: [XMLStreamEvent] = []
            bytes.withUnsafeBytes { all in
                for range in [0..<cut, cut..<bytes.count] {
                    var at = range.lowerBound
                    while true {
                        let (used, event) = parser.feed(UnsafeRawBufferPointer(rebasing: all[at..<range.upperBound]),
                                                        limits: XMLStreamLimits())
                        at += used
                        guard let event else { break }
                        got.append(event)
                    }
                }
            }
            #expect(got == whole, "cut at \(cut)")
        }
    }

    @Test func streamLevelTextIsReportedOnlyWhenAsked() {
        let text = Self.header + " \r\n<presence/> "
        #expect(Array(events(text, reportsStreamCData: true).dropFirst())
                == [.streamCData(Array(" \n".utf8)), .element(Self.el("presence")), .streamCData(Array(" ".utf8))])
        #expect(Array(events(text).dropFirst()) == [.element(Self.el("presence"))])
    }

    @Test func resetStartsANewStream() {
        var parser = XMLStreamParser()
        let limits = XMLStreamLimits()
        let first = Array((Self.header + "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>AGEA").utf8)
        first.withUnsafeBytes { all in
            let (n, e) = parser.feed(UnsafeRawBufferPointer(rebasing: all[...]), limits: limits)
            #expect(e != nil)
            let (m, e2) = parser.feed(UnsafeRawBufferPointer(rebasing: all[n...]), limits: limits)
            #expect(m == first.count - n && e2 == nil)
        }
        #expect(!parser.isIdle)
        parser.reset()
        #expect(parser.isIdle)
        // A new header (and its XML declaration) is welcome again.
        let second = Array(("<?xml version='1.0'?>" + Self.header).utf8)
        second.withUnsafeBytes { all in
            let (n, e) = parser.feed(all, limits: limits)
            #expect(n == second.count)
            #expect(e == .streamStart(name: Array("stream:stream".utf8), attributes: Self.headerAttributes))
        }
    }

    @Test func theParserIsIdleBetweenStanzasOnly() {
        var parser = XMLStreamParser()
        let limits = XMLStreamLimits()
        let bytes = Array((Self.header + "<message><body>hi</body></message><iq").utf8)
        bytes.withUnsafeBytes { all in
            let (n1, _) = parser.feed(UnsafeRawBufferPointer(rebasing: all[...]), limits: limits)
            #expect(parser.isIdle)
            let (n2, e2) = parser.feed(UnsafeRawBufferPointer(rebasing: all[n1..<(n1 + 10)]), limits: limits)
            #expect(n2 == 10 && e2 == nil)
            #expect(!parser.isIdle)
            let (n3, e3) = parser.feed(UnsafeRawBufferPointer(rebasing: all[(n1 + n2)...]), limits: limits)
            #expect(e3 != nil)
            #expect(parser.isIdle)
            let (_, e4) = parser.feed(UnsafeRawBufferPointer(rebasing: all[(n1 + n2 + n3)...]), limits: limits)
            #expect(e4 == nil)
            #expect(!parser.isIdle)
        }
    }

    @Test func aSplitUTF8SequenceIsNotIdle() {
        var parser = XMLStreamParser()
        let limits = XMLStreamLimits()
        let bytes = Array(Self.header.utf8) + [0xC3]
        bytes.withUnsafeBytes { all in
            let (n, _) = parser.feed(all, limits: limits)
            _ = parser.feed(UnsafeRawBufferPointer(rebasing: all[n...]), limits: limits)
            #expect(!parser.isIdle)
        }
    }

    /// fxml counts max_stanza_size from its last event, and text between stanzas is one: expat
    /// hands a CR over with the next character, a reference at its `;`. A 256-byte stanza after a CR,
    /// or a 255-byte one after `&amp;`, passes fxml's limit of 256 (corpus files
    /// size-after-*-between-stanzas.xml); the node (no stream-level text events) counts the same.
    @Test func theStanzaSizeCountRestartsWhereFxmlsDoes() {
        let limits = XMLStreamLimits(maxStanzaSize: 256)
        let afterCR = Self.header + "<presence/>\r<message><body>" + String(repeating: "x", count: 224) + "</body></message>"
        let afterRef = Self.header + "<presence/>&amp;<message><body>" + String(repeating: "x", count: 223) + "</body></message>"
        for (text, stanza) in [(afterCR, 256), (afterRef, 255)] {
            for reports in [false, true] {
                let got = events(text, limits: limits, reportsStreamCData: reports)
                let elements = got.filter { if case .element = $0 { true } else { false } }
                #expect(elements.count == 2, "a \(stanza)-byte stanza, stream-level text reported: \(reports): \(got.last.map { "\($0)" } ?? "none")")
                #expect(!got.contains { if case .error = $0 { true } else { false } })
            }
            // One byte more is too big, as for fxml.
            let longer = text.replacingOccurrences(of: "</body>", with: "x</body>")
            #expect(events(longer, limits: limits).last == .error(.tooBig))
        }
    }
}
