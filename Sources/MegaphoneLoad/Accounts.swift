/// The users of a run: user `i` is `PREFIXi@DOMAIN/RESOURCE` with password `PASSWORDPREFIXi`.
struct Accounts: Sendable {
    let userPrefix: [UInt8]
    let passwordPrefix: [UInt8]
    let domain: [UInt8]
    let resource: [UInt8]

    init(userPrefix: String, passwordPrefix: String, domain: String, resource: String) {
        self.userPrefix = Array(userPrefix.utf8)
        self.passwordPrefix = Array(passwordPrefix.utf8)
        self.domain = Array(domain.utf8)
        self.resource = Array(resource.utf8)
    }

    func user(_ index: Int) -> [UInt8] { userPrefix + Array(String(index).utf8) }

    func password(_ index: Int) -> [UInt8] { passwordPrefix + Array(String(index).utf8) }

    /// `PREFIXi@DOMAIN/RESOURCE`.
    func fullJID(_ index: Int) -> [UInt8] {
        user(index) + [UInt8(ascii: "@")] + domain + [UInt8(ascii: "/")] + resource
    }

    /// Whether `jid` is user `index`'s full JID, compared without building it.
    func isFullJID(_ jid: [UInt8], of index: Int) -> Bool {
        var rest = jid[...]
        guard rest.starts(with: userPrefix) else { return false }
        rest = rest.dropFirst(userPrefix.count)
        let digits = rest.prefix { $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }
        guard !digits.isEmpty, digits.count <= 18, Self.number(digits) == index else { return false }
        rest = rest.dropFirst(digits.count)
        guard rest.first == UInt8(ascii: "@") else { return false }
        rest = rest.dropFirst()
        guard rest.starts(with: domain) else { return false }
        rest = rest.dropFirst(domain.count)
        guard rest.first == UInt8(ascii: "/") else { return false }
        return rest.dropFirst().elementsEqual(resource)
    }

    /// The user index in a JID of this run (`PREFIXi@...`, bare or full); nil for anyone else.
    func index(of jid: [UInt8]) -> Int? {
        guard jid.starts(with: userPrefix) else { return nil }
        let local = jid[userPrefix.count...].prefix { $0 != UInt8(ascii: "@") && $0 != UInt8(ascii: "/") }
        guard !local.isEmpty, local.count <= 18,
              local.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }) else { return nil }
        return Self.number(local)
    }

    /// The localpart of a JID (everything before `@`, or the whole of a domain-less one).
    static func localpart(of jid: [UInt8]) -> ArraySlice<UInt8> {
        jid.prefix { $0 != UInt8(ascii: "@") && $0 != UInt8(ascii: "/") }
    }

    /// A run of at most 18 decimal digits (no overflow possible).
    private static func number(_ digits: ArraySlice<UInt8>) -> Int {
        digits.reduce(0) { $0 * 10 + Int($1 - UInt8(ascii: "0")) }
    }
}
