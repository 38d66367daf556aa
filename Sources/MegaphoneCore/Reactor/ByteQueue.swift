/// Bytes waiting on one connection, in order: client input not yet asked for, or output the socket has
/// not taken yet. Allocated only while something is pending; an idle connection has none.
///
/// Appends keep each chunk as it came (no copying into one big buffer); reads take from the front.
public final class ByteQueue {
    private var chunks: [[UInt8]] = []
    /// Index of the first chunk still holding bytes.
    private var head = 0
    /// Bytes of `chunks[head]` already taken.
    private var offset = 0
    public private(set) var count = 0

    public init() {}

    public var isEmpty: Bool { count == 0 }

    public func append(_ bytes: [UInt8]) {
        guard !bytes.isEmpty else { return }
        chunks.append(bytes)
        count += bytes.count
    }

    public func append(_ bytes: UnsafeRawBufferPointer) {
        guard !bytes.isEmpty else { return }
        append(Array(bytes))
    }

    /// Removes and returns up to `max` bytes from the front.
    public func take(max: Int) -> [UInt8] {
        precondition(max > 0, "take(max:) needs a positive maximum")
        var out: [UInt8] = []
        out.reserveCapacity(Swift.min(max, count))
        while out.count < max, head < chunks.count {
            let chunk = chunks[head]
            let n = Swift.min(max - out.count, chunk.count - offset)
            out.append(contentsOf: chunk[offset..<offset + n])
            consume(n)
        }
        return out
    }

    /// Calls `body` with the bytes at the front (one chunk's worth) and drops as many as it returns.
    /// For writing to a socket without copying.
    public func withFront(_ body: (UnsafeRawBufferPointer) -> Int) {
        guard head < chunks.count else { return }
        let used = chunks[head].withUnsafeBytes { body(UnsafeRawBufferPointer(rebasing: $0[offset...])) }
        consume(used)
    }

    private func consume(_ n: Int) {
        offset += n
        count -= n
        if offset == chunks[head].count {
            chunks[head] = []
            head += 1
            offset = 0
            // Drop spent slots now and then so the array does not grow without bound.
            if head == chunks.count {
                chunks.removeAll(keepingCapacity: false)
                head = 0
            } else if head >= 64 && head * 2 >= chunks.count {
                chunks.removeFirst(head)
                head = 0
            }
        }
    }
}
