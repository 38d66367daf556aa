/// Why a distribution term could not be read.
public enum TermError: Error, Equatable, Sendable {
    /// The buffer ended inside a term.
    case truncated
    /// A tag that is not valid at this place (or not external term format at all).
    case unexpectedTag(UInt8)
    /// The term has the right shape but a value out of range (an integer too big, a byte > 255, ...).
    case badValue
    /// The data is longer than the caller allows.
    case tooLarge
}
