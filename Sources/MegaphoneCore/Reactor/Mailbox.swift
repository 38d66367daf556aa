
/// A many-producer, one-consumer queue that wakes its consumer through an eventfd.
///
/// Producers `post`; the consumer polls `wakeup.fd` and calls `takeAll`. Only the post that finds the
/// queue empty signals the eventfd, so a busy consumer is not woken once per item. A mailbox whose
/// producer and consumer share one thread is made with `signalling: false`: nobody sleeps on it, so
/// posts and takes cost no system call; the consumer looks at `isEmpty` instead.
public final class Mailbox<Item: Sendable>: Sendable {
    private let queue = Locked<[Item]>([])
    let wakeup: EventFD
    let signalling: Bool

    init(signalling: Bool = true) throws(SystemError) {
        wakeup = try EventFD()
        self.signalling = signalling
    }

    public var isEmpty: Bool { queue.withLock { $0.isEmpty } }

    public func post(_ item: Item) {
        let wasEmpty = queue.withLock { q in
            let wasEmpty = q.isEmpty
            q.append(item)
            return wasEmpty
        }
        if wasEmpty && signalling { wakeup.signal() }
    }

    public func post(contentsOf items: [Item]) {
        guard !items.isEmpty else { return }
        let wasEmpty = queue.withLock { q in
            let wasEmpty = q.isEmpty
            q.append(contentsOf: items)
            return wasEmpty
        }
        if wasEmpty && signalling { wakeup.signal() }
    }

    /// Everything posted so far, oldest first. Consumer only: drains the eventfd first, so a post that
    /// races with this call either is taken now or signals again.
    public func takeAll() -> [Item] {
        if signalling { wakeup.drain() }
        return queue.withLock { q in
            let items = q
            q.removeAll(keepingCapacity: true)
            return items
        }
    }
}
