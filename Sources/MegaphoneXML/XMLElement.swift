/// One XML element as ejabberd holds it: fxml's `#xmlel{name, attrs, children}`, bytes as parsed.
///
/// Names and values are UTF-8 bytes exactly as `fxml_stream` gives them to a session: qualified
/// names as written (after fxml's namespace normalisation, see `NamespaceScope`), attribute values
/// with references resolved and whitespace normalised, text with line ends normalised and adjacent
/// runs merged into one `cdata` child.
public struct XMLElement: Equatable, Sendable {
    public var name: [UInt8]
    public var attributes: [XMLAttribute]
    public var children: [XMLNode]

    public init(name: [UInt8], attributes: [XMLAttribute] = [], children: [XMLNode] = []) {
        self.name = name
        self.attributes = attributes
        self.children = children
    }
}

/// `{Name, Value}` in an element's attribute list.
public struct XMLAttribute: Equatable, Sendable {
    public var name: [UInt8]
    public var value: [UInt8]

    public init(name: [UInt8], value: [UInt8]) {
        self.name = name
        self.value = value
    }
}

/// A child: `#xmlel{}` or `{xmlcdata, Bin}`.
public enum XMLNode: Equatable, Sendable {
    case element(XMLElement)
    case cdata([UInt8])
}

extension XMLElement {
    /// Convenience for tests and logs: the name as a String.
    public var nameString: String { String(decoding: name, as: UTF8.self) }

    /// The value of the attribute called `name`, if present.
    public func attribute(_ name: String) -> [UInt8]? {
        let key = Array(name.utf8)
        return attributes.first { $0.name == key }?.value
    }
}
