/// Decodes UTF-8 one byte at a time, as expat checks it: a lead byte says how many bytes its
/// character takes, and the character is judged once they have all arrived (overlong forms,
/// surrogates and values past U+10FFFF are refused); a byte that cannot start a character is
/// refused at once.
struct UTF8Sequence {
    private var bytes: UInt32 = 0
    private var need: UInt8 = 0
    private var have: UInt8 = 0

    enum Step: Equatable {
        case incomplete
        case scalar(UInt32)
        case invalid
    }

    var inProgress: Bool { need != 0 }

    mutating func push(_ b: UInt8) -> Step {
        if need == 0 {
            switch b {
            case 0x00...0x7F: return .scalar(UInt32(b))
            case 0xC0...0xDF: need = 2
            case 0xE0...0xEF: need = 3
            case 0xF0...0xF7: need = 4
            default: return .invalid
            }
            bytes = UInt32(b)
            have = 1
            return .incomplete
        }
        bytes = bytes << 8 | UInt32(b)
        have += 1
        guard have == need else { return .incomplete }
        defer { need = 0; have = 0; bytes = 0 }
        return Self.decode(bytes, count: Int(need)).map(Step.scalar) ?? .invalid
    }

    static func decode(_ packed: UInt32, count: Int) -> UInt32? {
        var trail: [UInt32] = []
        for k in stride(from: count - 2, through: 0, by: -1) {
            let t = (packed >> (UInt32(k) * 8)) & 0xFF
            guard t & 0xC0 == 0x80 else { return nil }
            trail.append(t & 0x3F)
        }
        let lead = packed >> (UInt32(count - 1) * 8)
        var scalar: UInt32
        switch count {
        case 2: scalar = lead & 0x1F
        case 3: scalar = lead & 0x0F
        default: scalar = lead & 0x07
        }
        for t in trail { scalar = scalar << 6 | t }
        switch count {
        case 2: guard scalar >= 0x80 else { return nil }
        case 3: guard scalar >= 0x800, !(0xD800...0xDFFF).contains(scalar) else { return nil }
        default: guard scalar >= 0x10000, scalar <= 0x10FFFF else { return nil }
        }
        return scalar
    }

    /// Appends `scalar` (a valid Unicode scalar) as UTF-8.
    static func append(_ scalar: UInt32, to out: inout [UInt8]) {
        switch scalar {
        case 0..<0x80:
            out.append(UInt8(scalar))
        case 0x80..<0x800:
            out.append(UInt8(0xC0 | scalar >> 6))
            out.append(UInt8(0x80 | scalar & 0x3F))
        case 0x800..<0x10000:
            out.append(UInt8(0xE0 | scalar >> 12))
            out.append(UInt8(0x80 | (scalar >> 6) & 0x3F))
            out.append(UInt8(0x80 | scalar & 0x3F))
        default:
            out.append(UInt8(0xF0 | scalar >> 18))
            out.append(UInt8(0x80 | (scalar >> 12) & 0x3F))
            out.append(UInt8(0x80 | (scalar >> 6) & 0x3F))
            out.append(UInt8(0x80 | scalar & 0x3F))
        }
    }
}

/// XML 1.0 character classes, for the ASCII range exactly and beyond it as a close approximation
/// of expat's tables (letters and the like for names: every non-ASCII character of the Basic
/// Multilingual Plane is accepted in names; characters beyond it are not, as in expat).
enum XMLChar {
    static func isChar(_ c: UInt32) -> Bool {
        switch c {
        case 0x9, 0xA, 0xD, 0x20...0xD7FF, 0xE000...0xFFFD, 0x10000...0x10FFFF: return true
        default: return false
        }
    }

    static func isSpace(_ c: UInt32) -> Bool { c == 0x20 || c == 0x9 || c == 0xA || c == 0xD }

    static func isNameStart(_ c: UInt32) -> Bool {
        switch c {
        case 0x41...0x5A, 0x61...0x7A, 0x5F, 0x3A: return true
        case 0xC0...0xD6, 0xD8...0xF6, 0xF8...0x2FF, 0x370...0x37D, 0x37F...0x1FFF, 0x200C...0x200D,
             0x2070...0x218F, 0x2C00...0x2FEF, 0x3001...0xD7FF, 0xF900...0xFDCF, 0xFDF0...0xFFFD:
            return true
        default: return false
        }
    }

    static func isName(_ c: UInt32) -> Bool {
        if isNameStart(c) { return true }
        switch c {
        case 0x30...0x39, 0x2D, 0x2E, 0xB7, 0x300...0x36F, 0x203F...0x2040: return true
        default: return false
        }
    }
}
