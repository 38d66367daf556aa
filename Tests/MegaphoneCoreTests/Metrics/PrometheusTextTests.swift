import Testing

@testable import MegaphoneCore

@Suite struct PrometheusTextTests {
    @Test func rendersHelpTypeAndSamples() {
        let text = PrometheusText.render([
            MetricFamily("x_total", .counter, help: "Things.", value: .int(3)),
            MetricFamily("y", .gauge, help: "Level.", samples: [
                .init(labels: [.init("a", "1"), .init("b", "2")], .int(-4)),
                .init(labels: [.init("a", "3")], .double(0.5)),
            ]),
        ])
        #expect(text == """
            # HELP x_total Things.
            # TYPE x_total counter
            x_total 3
            # HELP y Level.
            # TYPE y gauge
            y{a="1",b="2"} -4
            y{a="3"} 0.5

            """)
    }

    @Test func escapesLabelValuesAndHelp() {
        #expect(PrometheusText.escapeLabelValue(#"a\b"c"# + "\nd") == #"a\\b\"c\nd"#)
        #expect(PrometheusText.escapeLabelValue("plain é") == "plain é")
        // HELP escapes backslash and line feed, not quotes.
        #expect(PrometheusText.escapeHelp(#"say "hi"\"# + "\n") == #"say "hi"\\\n"#)
        let text = PrometheusText.render([
            MetricFamily("z", .gauge, help: "h", samples: [.init(labels: [.init("v", "q\"\n\\")], .int(1))]),
        ])
        #expect(text.contains(#"z{v="q\"\n\\"} 1"#))
    }

    @Test func specialDoubles() {
        #expect(MetricValue.double(.infinity).text == "+Inf")
        #expect(MetricValue.double(-.infinity).text == "-Inf")
        #expect(MetricValue.double(.nan).text == "NaN")
        #expect(MetricValue.double(1.5).text == "1.5")
        #expect(MetricValue.int(Int.max).text == "9223372036854775807")
    }

    @Test func names() {
        #expect(PrometheusText.isValidMetricName("megaphone_bytes_sent_total"))
        #expect(PrometheusText.isValidMetricName("a:b_c"))
        #expect(!PrometheusText.isValidMetricName("1abc"))
        #expect(!PrometheusText.isValidMetricName("a-b"))
        #expect(!PrometheusText.isValidMetricName(""))
        #expect(PrometheusText.isValidLabelName("reason"))
        #expect(!PrometheusText.isValidLabelName("a:b"))
        #expect(!PrometheusText.isValidLabelName("__name__"))
    }
}
