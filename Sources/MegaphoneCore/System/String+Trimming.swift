extension StringProtocol {
    /// The text without leading and trailing white space (a cookie file, an options file's line).
    package var trimmingWhitespace: String {
        String(drop(while: \.isWhitespace).reversed().drop(while: \.isWhitespace).reversed())
    }
}
