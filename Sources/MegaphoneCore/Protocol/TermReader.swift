/// Tags of Erlang's external term format (erts `external.h`, "External Term Format" in the ERTS guide).
enum ExternalTag {
    static let version: UInt8 = 131
    static let newFloat: UInt8 = 70
    static let bitBinary: UInt8 = 77
    static let newPid: UInt8 = 88
    static let newPort: UInt8 = 89
    static let newerReference: UInt8 = 90
    static let smallInteger: UInt8 = 97
    static let integer: UInt8 = 98
    static let float: UInt8 = 99
    static let atom: UInt8 = 100
    static let reference: UInt8 = 101
    static let port: UInt8 = 102
    static let pid: UInt8 = 103
    static let smallTuple: UInt8 = 104
    static let largeTuple: UInt8 = 105
    static let `nil`: UInt8 = 106
    static let string: UInt8 = 107
    static let list: UInt8 = 108
    static let binary: UInt8 = 109
    static let smallBig: UInt8 = 110
    static let largeBig: UInt8 = 111
    static let newFun: UInt8 = 112
    static let export: UInt8 = 113
    static let newReference: UInt8 = 114
    static let smallAtom: UInt8 = 115
    static let map: UInt8 = 116
    static let fun: UInt8 = 117
    static let atomUTF8: UInt8 = 118
    static let smallAtomUTF8: UInt8 = 119
    static let v4Port: UInt8 = 120
}

/// A pid as it arrived: node name plus the three numbers.
public struct DecodedPid: Equatable, Sendable {
    public var node: String
    public var num: UInt32
    public var serial: UInt32
    public var creation: UInt32
}

/// A bounds-checked reader of Erlang's external term format over a borrowed buffer.
///
/// ei's `ei_decode_*` functions take no buffer length and trust the encoding; a truncated or hostile
/// term from a peer that has the cookie would make them read past the receive buffer. This reader
/// checks every length against the buffer and throws instead. It never copies except where a
/// function returns an owned value (`[UInt8]`, `String`).
public struct TermReader {
    public let buffer: UnsafeRawBufferPointer
    public private(set) var offset: Int

    public init(_ buffer: UnsafeRawBufferPointer, offset: Int = 0) {
        self.buffer = buffer
        self.offset = offset
    }

    public var isAtEnd: Bool { offset >= buffer.count }

    // MARK: primitives

    private mutating func u8() throws(TermError) -> UInt8 {
        guard offset < buffer.count else { throw .truncated }
        defer { offset += 1 }
        return buffer[offset]
    }

    private mutating func u16() throws(TermError) -> Int {
        try Int(u8()) << 8 | Int(u8())
    }

    private mutating func u32() throws(TermError) -> UInt32 {
        var v: UInt32 = 0
        for _ in 0..<4 { v = v << 8 | UInt32(try u8()) }
        return v
    }

    private mutating func skip(_ n: Int) throws(TermError) {
        guard n >= 0, n <= buffer.count - offset else { throw .truncated }
        offset += n
    }

    private mutating func bytes(_ n: Int) throws(TermError) -> UnsafeRawBufferPointer {
        let start = offset
        try skip(n)
        return UnsafeRawBufferPointer(rebasing: buffer[start..<start + n])
    }

    /// The tag of the next term, without consuming it.
    public func peekTag() -> UInt8? {
        offset < buffer.count ? buffer[offset] : nil
    }

    // MARK: terms

    /// Consumes the version byte (131) that starts every message.
    public mutating func readVersion() throws(TermError) {
        let tag = try u8()
        guard tag == ExternalTag.version else { throw .unexpectedTag(tag) }
    }

    /// Reads a tuple header and returns its arity.
    public mutating func readTupleHeader() throws(TermError) -> Int {
        let tag = try u8()
        switch tag {
        case ExternalTag.smallTuple: return Int(try u8())
        case ExternalTag.largeTuple: return Int(try u32())
        default: offset -= 1; throw .unexpectedTag(tag)
        }
    }

    /// Reads an atom's name (latin-1 atoms are converted to UTF-8).
    public mutating func readAtom() throws(TermError) -> String {
        let tag = try u8()
        let length: Int
        switch tag {
        case ExternalTag.smallAtomUTF8, ExternalTag.smallAtom: length = Int(try u8())
        case ExternalTag.atomUTF8, ExternalTag.atom: length = try u16()
        default: offset -= 1; throw .unexpectedTag(tag)
        }
        let raw = try bytes(length)
        if tag == ExternalTag.atom || tag == ExternalTag.smallAtom {
            return String(String.UnicodeScalarView(raw.map { Unicode.Scalar($0) }))
        }
        return String(decoding: raw, as: UTF8.self)
    }

    /// Reads an integer that fits in 64 bits, signed or not (`-2^63 ..< 2^64`), as its magnitude and sign.
    private mutating func readInteger() throws(TermError) -> (magnitude: UInt64, negative: Bool) {
        let tag = try u8()
        switch tag {
        case ExternalTag.smallInteger:
            return (UInt64(try u8()), false)
        case ExternalTag.integer:
            let v = Int32(bitPattern: try u32())
            return (v.magnitude.toUInt64, v < 0)
        case ExternalTag.smallBig, ExternalTag.largeBig:
            let n = tag == ExternalTag.smallBig ? Int(try u8()) : Int(try u32())
            let negative = try u8() != 0
            let digits = try bytes(n)
            var v: UInt64 = 0
            for (i, byte) in digits.enumerated() where byte != 0 {
                guard i < 8 else { throw .badValue }
                v |= UInt64(byte) << (8 * UInt64(i))
            }
            return (v, negative)
        default:
            offset -= 1
            throw .unexpectedTag(tag)
        }
    }

    /// Reads a non-negative integer below 2^64.
    public mutating func readUInt64() throws(TermError) -> UInt64 {
        let (magnitude, negative) = try readInteger()
        guard !negative || magnitude == 0 else { throw .badValue }
        return magnitude
    }

    /// Reads a non-negative integer that fits in `Int`.
    public mutating func readInt() throws(TermError) -> Int {
        let v = try readUInt64()
        guard v <= UInt64(Int.max) else { throw .badValue }
        return Int(v)
    }

    /// Reads a pid (`NEW_PID_EXT`, or the pre-OTP-23 `PID_EXT`).
    public mutating func readPid() throws(TermError) -> DecodedPid {
        let tag = try u8()
        guard tag == ExternalTag.newPid || tag == ExternalTag.pid else { offset -= 1; throw .unexpectedTag(tag) }
        let node = try readAtom()
        let num = try u32()
        let serial = try u32()
        let creation = tag == ExternalTag.newPid ? try u32() : UInt32(try u8())
        return DecodedPid(node: node, num: num, serial: serial, creation: creation)
    }

    /// Reads a reference (`NEWER_REFERENCE_EXT`, the only form OTP 23 and later send) without copying
    /// its node name: `node` is the range of the name's bytes in `buffer`.
    public mutating func readReference() throws(TermError) -> DecodedReference {
        let tag = try u8()
        guard tag == ExternalTag.newerReference else { offset -= 1; throw .unexpectedTag(tag) }
        let count = try u16()
        guard count >= 1, count <= 5 else { throw .badValue }
        let name = try readAtomBytes().count
        let node = (offset - name)..<offset
        let creation = try u32()
        var ids: (UInt32, UInt32, UInt32) = (0, 0, 0)
        ids.0 = try u32()
        if count > 1 { ids.1 = try u32() }
        if count > 2 { ids.2 = try u32() }
        if count > 3 { try skip(4 * (count - 3)) }
        return DecodedReference(node: node, creation: creation, idCount: count, ids: ids)
    }

    /// Reads a list header: the number of elements of a proper or improper list (`[]` is 0). A string
    /// (`STRING_EXT`) is not accepted here; callers that want bytes use `readIOData`.
    public mutating func readListHeader() throws(TermError) -> Int {
        let tag = try u8()
        switch tag {
        case ExternalTag.nil: return 0
        case ExternalTag.list: return Int(try u32())
        default: offset -= 1; throw .unexpectedTag(tag)
        }
    }

    /// Consumes `[]`, the tail of a proper list.
    public mutating func readNil() throws(TermError) {
        let tag = try u8()
        guard tag == ExternalTag.nil else { offset -= 1; throw .unexpectedTag(tag) }
    }

    /// Skips one whole term of any type and returns the range of its bytes, so that it can be sent back
    /// unchanged (a caller's Ref). Iterative, so a deeply nested term cannot exhaust the stack.
    @discardableResult
    public mutating func skipTerm() throws(TermError) -> Range<Int> {
        let start = offset
        var pending = 1
        while pending > 0 {
            pending -= 1
            let tag = try u8()
            switch tag {
            case ExternalTag.smallInteger: try skip(1)
            case ExternalTag.integer: try skip(4)
            case ExternalTag.float: try skip(31)
            case ExternalTag.newFloat: try skip(8)
            case ExternalTag.atom, ExternalTag.atomUTF8: try skip(try u16())
            case ExternalTag.smallAtom, ExternalTag.smallAtomUTF8: try skip(Int(try u8()))
            case ExternalTag.smallTuple: pending += Int(try u8())
            case ExternalTag.largeTuple: pending += Int(try u32())
            case ExternalTag.nil: break
            case ExternalTag.string: try skip(try u16())
            case ExternalTag.list: pending += Int(try u32()) + 1
            case ExternalTag.binary: try skip(Int(try u32()))
            case ExternalTag.bitBinary: try skip(Int(try u32()) + 1)
            case ExternalTag.smallBig: try skip(Int(try u8()) + 1)
            case ExternalTag.largeBig: try skip(Int(try u32()) + 1)
            case ExternalTag.map: pending += 2 * Int(try u32())
            case ExternalTag.pid: try skipAtomThen(9)
            case ExternalTag.newPid: try skipAtomThen(12)
            case ExternalTag.port: try skipAtomThen(5)
            case ExternalTag.newPort: try skipAtomThen(8)
            case ExternalTag.v4Port: try skipAtomThen(12)
            case ExternalTag.reference: try skipAtomThen(5)
            case ExternalTag.newReference, ExternalTag.newerReference:
                let ids = try u16()
                try skipAtomThen((tag == ExternalTag.newReference ? 1 : 4) + 4 * ids)
            case ExternalTag.export: pending += 3
            case ExternalTag.newFun:
                // Size counts itself and the tag's following bytes: skip the rest in one go.
                try skip(Int(try u32()) - 4)
            default:
                offset -= 1
                throw .unexpectedTag(tag)
            }
            // A term's element count is bounded by its bytes: each element takes at least one.
            guard pending <= buffer.count - offset else { throw .truncated }
        }
        return start..<offset
    }

    private mutating func skipAtomThen(_ n: Int) throws(TermError) {
        _ = try readAtomBytes()
        try skip(n)
    }

    private mutating func readAtomBytes() throws(TermError) -> UnsafeRawBufferPointer {
        let tag = try u8()
        switch tag {
        case ExternalTag.smallAtomUTF8, ExternalTag.smallAtom: return try bytes(Int(try u8()))
        case ExternalTag.atomUTF8, ExternalTag.atom: return try bytes(try u16())
        default: offset -= 1; throw .unexpectedTag(tag)
        }
    }

    /// Reads iodata (a binary, or a possibly nested, possibly improper list of bytes, binaries and
    /// iolists) and returns its bytes flattened. Throws `.tooLarge` past `limit` bytes without
    /// buffering them. Iterative: nesting depth costs one stack slot in an array, not a call frame.
    public mutating func readIOData(limit: Int) throws(TermError) -> [UInt8] {
        var out: [UInt8] = []
        // For each open list, how many of its terms (elements, then the tail) are still to be read.
        var open: [Int] = []
        repeat {
            let inList = !open.isEmpty
            let isTail = open.last == 1
            if !open.isEmpty { open[open.count - 1] -= 1 }
            let tag = try u8()
            switch tag {
            case ExternalTag.binary:
                let n = Int(try u32())
                guard n <= limit - out.count else { throw .tooLarge }
                out.append(contentsOf: try bytes(n))
            case ExternalTag.string:
                let n = try u16()
                guard n <= limit - out.count else { throw .tooLarge }
                out.append(contentsOf: try bytes(n))
            case ExternalTag.nil:
                break
            case ExternalTag.list:
                let n = Int(try u32())
                guard n <= buffer.count - offset else { throw .truncated }
                open.append(n + 1)
            case ExternalTag.smallInteger where inList && !isTail:
                guard out.count < limit else { throw .tooLarge }
                out.append(try u8())
            case ExternalTag.integer where inList && !isTail:
                let v = Int32(bitPattern: try u32())
                guard (0...255).contains(v) else { throw .badValue }
                guard out.count < limit else { throw .tooLarge }
                out.append(UInt8(v))
            default:
                offset -= 1
                throw .unexpectedTag(tag)
            }
            while let last = open.last, last == 0 { open.removeLast() }
        } while !open.isEmpty
        return out
    }
}

extension UInt32 {
    fileprivate var toUInt64: UInt64 { UInt64(self) }
}
