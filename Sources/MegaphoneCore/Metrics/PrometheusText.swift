/// One metric family (a name, its help, its type and its samples) in Prometheus's text exposition
/// format, version 0.0.4 (https://prometheus.io/docs/instrumenting/exposition_formats/).
///
/// Names are ours, not input: they are checked with `precondition`. Label values and help text may hold
/// anything and are escaped as the format says.
public struct MetricFamily: Sendable {
    public enum Kind: String, Sendable {
        case counter, gauge, histogram
    }

    public struct Label: Sendable, Equatable {
        public var name: String
        public var value: String

        public init(_ name: String, _ value: String) {
            self.name = name
            self.value = value
        }
    }

    public struct Sample: Sendable {
        /// Appended to the family's name: a histogram's `_bucket`, `_sum` and `_count`.
        public var suffix: String
        public var labels: [Label]
        public var value: MetricValue

        public init(suffix: String = "", labels: [Label] = [], _ value: MetricValue) {
            self.suffix = suffix
            self.labels = labels
            self.value = value
        }
    }

    /// The family's name; a counter's ends in `_total`, and so do its samples' (as client_golang writes them).
    public var name: String
    public var help: String
    public var kind: Kind
    public var samples: [Sample]

    public init(_ name: String, _ kind: Kind, help: String, samples: [Sample]) {
        precondition(PrometheusText.isValidMetricName(name), "invalid metric name \(name)")
        precondition(kind != .counter || name.hasSuffix("_total"), "a counter's name ends in _total: \(name)")
        self.name = name
        self.kind = kind
        self.help = help
        self.samples = samples
    }

    /// A histogram family: cumulative `_bucket{le}` counts (the last is `+Inf`), `_sum` and `_count`.
    public static func histogram(_ name: String, help: String, bounds: [Double], cumulative: [Int], sum: Double) -> MetricFamily {
        precondition(cumulative.count == bounds.count + 1, "one count per bound and one for +Inf")
        var samples = zip(bounds, cumulative).map { bound, count in
            Sample(suffix: "_bucket", labels: [Label("le", MetricValue.double(bound).text)], .int(count))
        }
        let count = cumulative.last ?? 0
        samples.append(Sample(suffix: "_bucket", labels: [Label("le", "+Inf")], .int(count)))
        samples.append(Sample(suffix: "_sum", .double(sum)))
        samples.append(Sample(suffix: "_count", .int(count)))
        return MetricFamily(name, .histogram, help: help, samples: samples)
    }

    /// A family of one unlabelled sample.
    public init(_ name: String, _ kind: Kind, help: String, value: MetricValue) {
        self.init(name, kind, help: help, samples: [Sample(value)])
    }
}

/// A sample's value: integers print exactly; doubles as Prometheus (Go's ParseFloat) reads them.
public enum MetricValue: Sendable, Equatable {
    case int(Int)
    case double(Double)

    var text: String {
        switch self {
        case .int(let n): return String(n)
        case .double(let d):
            if d.isNaN { return "NaN" }
            if d.isInfinite { return d < 0 ? "-Inf" : "+Inf" }
            return d.description
        }
    }
}

/// Writes metric families as the text exposition format, version 0.0.4.
public enum PrometheusText {
    /// What `Content-Type` says for this format.
    public static let contentType = "text/plain; version=0.0.4; charset=utf-8"

    /// `# HELP`, `# TYPE` and the samples of each family, in order, each line ending in `\n`.
    public static func render(_ families: [MetricFamily]) -> String {
        var out = ""
        out.reserveCapacity(families.count * 160)
        for family in families {
            out += "# HELP \(family.name) \(escapeHelp(family.help))\n"
            out += "# TYPE \(family.name) \(family.kind.rawValue)\n"
            for sample in family.samples {
                out += family.name
                out += sample.suffix
                if !sample.labels.isEmpty {
                    out += "{"
                    for (i, label) in sample.labels.enumerated() {
                        precondition(isValidLabelName(label.name), "invalid label name \(label.name)")
                        if i > 0 { out += "," }
                        out += "\(label.name)=\"\(escapeLabelValue(label.value))\""
                    }
                    out += "}"
                }
                out += " \(sample.value.text)\n"
            }
        }
        return out
    }

    /// HELP text: `\` becomes `\\` and a line feed `\n`.
    public static func escapeHelp(_ text: String) -> String {
        escape(text, quotes: false)
    }

    /// A label value: `\` becomes `\\`, `"` becomes `\"` and a line feed `\n`.
    public static func escapeLabelValue(_ text: String) -> String {
        escape(text, quotes: true)
    }

    private static func escape(_ text: String, quotes: Bool) -> String {
        guard text.utf8.contains(where: { $0 == UInt8(ascii: "\\") || $0 == UInt8(ascii: "\n")
                                            || (quotes && $0 == UInt8(ascii: "\"")) })
        else { return text }
        var out = ""
        out.reserveCapacity(text.utf8.count + 8)
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\"" where quotes: out += "\\\""
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out
    }

    /// `[a-zA-Z_:][a-zA-Z0-9_:]*`
    public static func isValidMetricName(_ name: String) -> Bool {
        isName(name, colon: true)
    }

    /// `[a-zA-Z_][a-zA-Z0-9_]*`, and not starting with `__` (reserved for Prometheus itself).
    public static func isValidLabelName(_ name: String) -> Bool {
        isName(name, colon: false) && !name.hasPrefix("__")
    }

    private static func isName(_ name: String, colon: Bool) -> Bool {
        guard let first = name.utf8.first else { return false }
        func letter(_ c: UInt8) -> Bool {
            (c >= UInt8(ascii: "a") && c <= UInt8(ascii: "z")) || (c >= UInt8(ascii: "A") && c <= UInt8(ascii: "Z"))
                || c == UInt8(ascii: "_") || (colon && c == UInt8(ascii: ":"))
        }
        guard letter(first) else { return false }
        return name.utf8.allSatisfy { letter($0) || ($0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9")) }
    }
}
