/// The `Info` map of `{megaphone_started, Ref, Info}`: what a `start` opened and runs with.
struct StartInfo {
    var node: String
    /// What is bound, in the order `start` named them (the real ports of port-0 listeners).
    var listeners: [ListenerSpec]
    var options: StartOptions
    var controller: PidRef
    /// The controller's node name; nil when it is not known (the map then says `undefined`).
    var controllerNode: String?

    /// `#{node, listeners, max_connections, max_chunk, send_queue_limit, input_buffer_limit, controller}`.
    func encode(into e: TermEncoder) {
        e.map(7)
        e.atom("node")
        e.atom(node)
        e.atom("listeners")
        listeners.encode(into: e)
        e.atom("max_connections")
        if options.maxConnections == .max { e.atom("infinity") } else { e.int(options.maxConnections) }
        e.atom("max_chunk")
        e.int(options.maxChunk)
        e.atom("send_queue_limit")
        e.int(options.sendQueueLimit)
        e.atom("input_buffer_limit")
        e.int(options.inputBufferLimit)
        e.atom("controller")
        if let controllerNode {
            e.pid(node: controllerNode, num: controller.num, serial: controller.serial, creation: controller.creation)
        } else {
            e.atom("undefined")
        }
    }
}

/// The map of `{megaphone_stats, Ref, Map}` and `{megaphone_stopped, Ref, Map}`: the node's counters,
/// its closes by reason and its listeners.
struct StatsReport {
    var node: String
    var listeners: [ListenerSpec]
    /// Counters and gauges by name, in the order they are encoded.
    var values: [(String, Int)]
    /// `closed => #{Reason => N}`.
    var closed: [(String, Int)]
    /// `connections_by_transport => #{tcp => N, starttls => N, tls => N}`: open connections by the
    /// transport of the listener that accepted them.
    var byTransport: [(String, Int)] = []
    /// `controller_nodes => #{Node => #{connections => N}}`: each attached controller's node and the
    /// open connections its processes own (announced to it, or taken by its sessions).
    var controllerNodes: [(String, Int)] = []

    func encode(into e: TermEncoder) {
        e.map(values.count + 5)
        e.atom("node")
        e.atom(node)
        for (key, value) in values {
            e.atom(key)
            e.int(value)
        }
        e.atom("closed")
        e.map(closed.count)
        for (reason, count) in closed {
            e.atom(reason)
            e.int(count)
        }
        e.atom("connections_by_transport")
        e.map(byTransport.count)
        for (transport, count) in byTransport {
            e.atom(transport)
            e.int(count)
        }
        e.atom("listeners")
        listeners.encode(into: e)
        e.atom("controller_nodes")
        e.map(controllerNodes.count)
        for (node, connections) in controllerNodes {
            e.atom(node)
            e.map(1)
            e.atom("connections")
            e.int(connections)
        }
    }
}

extension Array where Element == ListenerSpec {
    /// `[{Transport, IP, Port}]`.
    func encode(into e: TermEncoder) {
        e.list(count)
        for spec in self { spec.encode(into: e) }
        e.emptyList()
    }
}
