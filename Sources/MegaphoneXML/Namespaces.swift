/// XML namespaces as expat resolves them and `fxml_stream` then rewrites them into the names and
/// attributes ejabberd's sessions expect.
///
/// fxml's normalisation, for an element below the stream element, given its parent's namespace:
/// - a prefixed element whose prefix the stream header declared with the same namespace keeps its
///   prefixed name and takes its parent's namespace (`<stream:features>`), unless an ancestor
///   below the header redeclared one of the header's prefixes; a redeclaration of that same prefix
///   on the element is dropped;
/// - otherwise the name loses its prefix; an element in its parent's namespace loses its default
///   `xmlns` declaration, and any other gets `xmlns` = its namespace: in place of its own default
///   declaration, or first in the list when it has none;
/// - namespace declarations come first, in document order, then the other attributes in document
///   order; `xmlns=''` disappears (expat reports no declaration for it).
/// The stream element keeps its name and declarations as written; the prefixes it declares are
/// the "top" prefixes above.
struct Binding: Equatable {
    /// Empty for the default namespace.
    var prefix: [UInt8]
    /// Empty when a default declaration unsets the namespace.
    var uri: [UInt8]
}

/// The stream element's part of the namespace scope, kept for the stream's whole life: immutable,
/// and one shared instance for the header every client sends (`jabber:client` with the usual
/// `stream` prefix), so an idle connection holds no namespace bytes of its own.
final class StreamContext: Sendable {
    /// The qualified name as written (`stream:stream`).
    let name: [UInt8]
    let bindings: [Binding]
    /// fxml's namespace of the stream element, the parent namespace of every stanza.
    let namespace: [UInt8]
    /// Every prefix the header declares, with its namespace.
    let topPrefixes: [Binding]
    /// The default namespace in scope below the header (`[]`: none).
    let defaultNamespace: [UInt8]

    init(name: [UInt8], bindings: [Binding], namespace: [UInt8], topPrefixes: [Binding]) {
        self.name = name
        self.bindings = bindings
        self.namespace = namespace
        self.topPrefixes = topPrefixes
        defaultNamespace = bindings.last(where: { $0.prefix.isEmpty })?.uri ?? []
    }

    static let streamsNS: [UInt8] = Array("http://etherx.jabber.org/streams".utf8)
    static let clientNS: [UInt8] = Array("jabber:client".utf8)
    static let xmlNS: [UInt8] = Array("http://www.w3.org/XML/1998/namespace".utf8)
    static let xmlnsNS: [UInt8] = Array("http://www.w3.org/2000/xmlns/".utf8)
    static let streamPrefix: [UInt8] = Array("stream".utf8)

    /// `<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>`, in
    /// either order of the two declarations.
    static let client = StreamContext(
        name: Array("stream:stream".utf8),
        bindings: [Binding(prefix: [], uri: clientNS), Binding(prefix: streamPrefix, uri: streamsNS)],
        namespace: clientNS,
        topPrefixes: [Binding(prefix: streamPrefix, uri: streamsNS)])

    /// The shared instance when this context is the usual one, else self.
    func interned() -> StreamContext {
        let c = StreamContext.client
        guard name == c.name, namespace == c.namespace, topPrefixes == c.topPrefixes,
              bindings.count == 2, bindings.contains(c.bindings[0]), bindings.contains(c.bindings[1])
        else { return self }
        return c
    }
}

/// An open element below the stream element, while its stanza is being read.
struct Frame {
    /// The qualified name as written, to match its end tag.
    var qname: [UInt8]
    var element: XMLElement
    var bindings: [Binding]
    /// fxml's namespace of this element (its children's parent namespace).
    var namespace: [UInt8]
    /// A prefix the stream header declared has been redeclared here or above.
    var redefinedTop: Bool
    /// The default namespace in scope for this element's children (`[]`: none), so that resolving
    /// an unprefixed name does not walk the open elements.
    var defaultNamespace: [UInt8]
}

/// A start tag's pieces as read, before namespaces are applied.
struct RawTag {
    var qname: [UInt8] = []
    var attributes: [XMLAttribute] = []

    mutating func reset() {
        qname.removeAll(keepingCapacity: true)
        attributes.removeAll(keepingCapacity: true)
    }
}

enum QName {
    /// Splits `p:local` into its prefix (empty if none) and local part; nil for names that are not
    /// QNames (empty parts, more than one colon).
    static func split(_ name: [UInt8]) -> (prefix: ArraySlice<UInt8>, local: ArraySlice<UInt8>)? {
        guard let colon = name.firstIndex(of: UInt8(ascii: ":")) else { return (name[0..<0], name[...]) }
        let prefix = name[..<colon]
        let local = name[(colon + 1)...]
        guard !prefix.isEmpty, !local.isEmpty, !local.contains(UInt8(ascii: ":")) else { return nil }
        return (prefix, local)
    }

    static let xmlnsName: [UInt8] = Array("xmlns".utf8)
    static let xmlPrefix: [UInt8] = Array("xml".utf8)

    /// `xmlns` (default declaration, prefix empty) or `xmlns:p` (prefix p); nil for other names.
    static func declaredPrefix(_ name: [UInt8]) -> [UInt8]? {
        if name == xmlnsName { return [] }
        guard name.count > 6, name.starts(with: xmlnsName), name[5] == UInt8(ascii: ":") else { return nil }
        return Array(name[6...])
    }
}

/// What a start tag becomes after namespaces: the element (normalised as fxml does) and the scope
/// it opens.
struct ResolvedTag {
    var element: XMLElement
    var bindings: [Binding]
    var namespace: [UInt8]
    var redefinedTop: Bool
}

extension XMLStreamParser {
    /// The namespace `prefix` (empty: the default namespace) is bound to in the current scope,
    /// the tag's own declarations first; `[]` for no namespace, nil if the prefix is unbound.
    static func lookup(_ prefix: ArraySlice<UInt8>, own: [Binding], frames: [Frame], stream: StreamContext?) -> [UInt8]? {
        if let b = own.last(where: { $0.prefix[...] == prefix }) { return b.uri }
        if prefix.isEmpty { return frames.last?.defaultNamespace ?? stream?.defaultNamespace ?? [] }
        for frame in frames.reversed() {
            if let b = frame.bindings.last(where: { $0.prefix[...] == prefix }) { return b.uri }
        }
        if let stream, let b = stream.bindings.last(where: { $0.prefix[...] == prefix }) { return b.uri }
        if prefix.isEmpty { return [] }
        if prefix.elementsEqual(QName.xmlPrefix) { return StreamContext.xmlNS }
        return nil
    }

    /// Applies namespaces to a start tag at `depth` (1: the stream element). `frames` are the open
    /// elements below the stream element.
    static func resolve(_ tag: RawTag, depth: Int, frames: [Frame], stream: StreamContext?) -> Result<ResolvedTag, XMLStreamError> {
        guard let (prefix, local) = QName.split(tag.qname) else { return .failure(.invalidToken) }
        var declarations: [(attribute: XMLAttribute, binding: Binding)] = []
        var plain: [XMLAttribute] = []
        for a in tag.attributes {
            guard let declared = QName.declaredPrefix(a.name) else {
                guard QName.split(a.name) != nil else { return .failure(.invalidToken) }
                plain.append(a)
                continue
            }
            if declared == QName.xmlnsName { return .failure(.reservedPrefixXMLNS) }
            if declared == QName.xmlPrefix {
                guard a.value == StreamContext.xmlNS else { return .failure(.reservedPrefixXML) }
            } else if a.value == StreamContext.xmlNS || a.value == StreamContext.xmlnsNS {
                return .failure(.reservedNamespace)
            }
            if !declared.isEmpty && a.value.isEmpty { return .failure(.undeclaringPrefix) }
            declarations.append((a, Binding(prefix: declared, uri: a.value)))
        }
        let own = declarations.map(\.binding)
        guard let uri = lookup(prefix, own: own, frames: frames, stream: stream) else { return .failure(.unboundPrefix) }
        // Attributes: prefixes bound, no two with the same expanded name.
        var expanded: [([UInt8], ArraySlice<UInt8>)] = []
        for a in plain {
            guard let (p, l) = QName.split(a.name) else { return .failure(.invalidToken) }
            guard !p.isEmpty else { continue }
            guard let u = lookup(p, own: own, frames: frames, stream: stream) else { return .failure(.unboundPrefix) }
            if expanded.contains(where: { $0.0 == u && $0.1 == l }) { return .failure(.duplicateAttribute) }
            expanded.append((u, l))
        }

        let parentNamespace = frames.last?.namespace ?? stream?.namespace ?? []
        let parentRedefined = frames.last?.redefinedTop ?? false
        if depth == 1 {
            var attributes = declarations.filter { !$0.binding.uri.isEmpty || !$0.binding.prefix.isEmpty }.map(\.attribute)
            attributes.append(contentsOf: plain)
            let namespace: [UInt8]
            if prefix.isEmpty {
                namespace = uri
            } else {
                namespace = declarations.first(where: { $0.binding.prefix.isEmpty })?.binding.uri ?? []
            }
            return .success(ResolvedTag(element: XMLElement(name: tag.qname, attributes: attributes),
                                        bindings: own, namespace: namespace, redefinedTop: false))
        }

        enum Op { case replaceXMLNS, removeXMLNS, removePrefix }
        var op = Op.replaceXMLNS
        var name: [UInt8]
        var namespace = uri
        let topPrefixes = stream?.topPrefixes ?? []
        if !prefix.isEmpty, !parentRedefined,
           topPrefixes.contains(where: { $0.prefix[...] == prefix && $0.uri == uri }) {
            op = .removePrefix
            name = tag.qname
            namespace = parentNamespace
        } else {
            name = Array(local)
            if parentNamespace == uri { op = .removeXMLNS }
        }
        var redefined = parentRedefined
        var attributes: [XMLAttribute] = []
        var replaced = false
        for (attribute, binding) in declarations {
            if binding.prefix.isEmpty {
                if binding.uri.isEmpty { continue }
                switch op {
                case .removeXMLNS: continue
                case .replaceXMLNS where !replaced:
                    attributes.append(XMLAttribute(name: QName.xmlnsName, value: namespace))
                    replaced = true
                    continue
                default: break
                }
            } else if op == .removePrefix && binding.prefix[...] == prefix {
                continue
            } else if !redefined && topPrefixes.contains(where: { $0.prefix == binding.prefix }) {
                redefined = true
            }
            attributes.append(attribute)
        }
        if op == .replaceXMLNS && !replaced {
            attributes.insert(XMLAttribute(name: QName.xmlnsName, value: namespace), at: 0)
        }
        attributes.append(contentsOf: plain)
        _ = name
        return .success(ResolvedTag(element: XMLElement(name: name, attributes: attributes),
                                    bindings: own, namespace: namespace, redefinedTop: redefined))
    }
}
