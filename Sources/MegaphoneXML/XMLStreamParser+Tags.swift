/// Completing tags: a start tag opens the stream or an element, an end tag closes one, and the
/// close of a top-level element is an event.
extension XMLStreamParser {
    mutating func finishStartTag(selfClosing: Bool, _ limits: XMLStreamLimits) -> Outcome {
        let work = w
        let tag = work.tag
        for (i, a) in tag.attributes.enumerated() where tag.attributes[..<i].contains(where: { $0.name == a.name }) {
            return .fail(.duplicateAttribute)
        }
        let resolved: ResolvedTag
        switch Self.resolve(tag, depth: Int(depth) + 1, frames: work.stack, stream: stream) {
        case .success(let r): resolved = r
        case .failure(let error): return .fail(error)
        }
        work.tag.reset()
        lex = .content
        afterCR = false
        brackets = 0
        if depth == 0 {
            depth = 1
            stream = StreamContext(name: tag.qname, bindings: resolved.bindings, namespace: resolved.namespace,
                                   topPrefixes: resolved.bindings.filter { !$0.prefix.isEmpty }).interned()
            if selfClosing {
                depth = 0
                lex = .epilog
                pendingEnd = tag.qname
            }
            return .event(.streamStart(name: resolved.element.name, attributes: resolved.element.attributes))
        }
        let inherited = work.stack.last?.defaultNamespace ?? stream?.defaultNamespace ?? []
        let defaultNamespace = resolved.bindings.last(where: { $0.prefix.isEmpty })?.uri ?? inherited
        work.stack.append(Frame(qname: tag.qname, element: resolved.element, bindings: resolved.bindings,
                                namespace: resolved.namespace, redefinedTop: resolved.redefinedTop,
                                defaultNamespace: defaultNamespace))
        depth += 1
        return selfClosing ? closeElement() : .more
    }

    mutating func finishEndTag() -> Outcome {
        let work = w
        let name = work.token
        work.token.removeAll(keepingCapacity: true)
        lex = .content
        afterCR = false
        brackets = 0
        if depth == 1 {
            guard let stream, name == stream.name else { return .fail(.tagMismatch) }
            depth = 0
            lex = .epilog
            return .event(.streamEnd(name: name))
        }
        guard let top = work.stack.last, top.qname == name else { return .fail(.tagMismatch) }
        return closeElement()
    }

    /// Closes the innermost open element: a child of its parent, or the event if it is top-level.
    mutating func closeElement() -> Outcome {
        let work = w
        guard let frame = work.stack.popLast() else { return .fail(.syntax) }
        depth -= 1
        if work.stack.isEmpty {
            work.text.removeAll(keepingCapacity: false)
            return .event(.element(frame.element))
        }
        work.stack[work.stack.count - 1].element.children.append(.element(frame.element))
        return .more
    }
}
