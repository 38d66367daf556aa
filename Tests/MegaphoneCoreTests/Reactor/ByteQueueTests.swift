import Testing

@testable import MegaphoneCore

struct ByteQueueTests {
    @Test func takeNeverExceedsTheChunkSize() {
        let q = ByteQueue()
        q.append(Array(0..<10))
        q.append(Array(10..<25))
        var out: [UInt8] = []
        var sizes: [Int] = []
        while !q.isEmpty {
            let chunk = q.take(max: 7)
            sizes.append(chunk.count)
            out += chunk
        }
        #expect(sizes == [7, 7, 7, 4])
        #expect(out == Array(0..<25))
        #expect(q.count == 0)
    }

    @Test func partialWritesKeepOrder() {
        let q = ByteQueue()
        for i in 0..<200 { q.append([UInt8(i)]) }
        var written: [UInt8] = []
        while !q.isEmpty {
            q.withFront { front in
                written.append(contentsOf: front.prefix(1))
                return 1
            }
        }
        #expect(written == (0..<200).map { UInt8($0) })
    }

    @Test func countTracksAppendsAndTakes() {
        let q = ByteQueue()
        q.append([])
        #expect(q.isEmpty)
        q.append([1, 2, 3])
        q.withFront { _ in 2 }
        #expect(q.count == 1)
        #expect(q.take(max: 100) == [3])
    }
}
