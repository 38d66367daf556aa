// swift-tools-version:6.0
import PackageDescription

// erl_interface comes from Debian's erlang-dev, which puts ei.h and libei.a on the default search paths
// (/usr/include, /usr/lib), so the CEI target needs no -I/-L and no unsafeFlags. OpenSSL comes from
// libssl-dev through pkg-config.
let package = Package(
    name: "megaphone",
    products: [
        .executable(name: "megaphone", targets: ["megaphone"]),
        .library(name: "MegaphoneCore", targets: ["MegaphoneCore"]),
        .library(name: "MegaphoneXML", targets: ["MegaphoneXML"]),
        .executable(name: "megaphone-xml-events", targets: ["megaphone-xml-events"]),
        .executable(name: "megaphone-load", targets: ["megaphone-load"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-log.git", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.5.0"),
    ],
    targets: [
        .target(
            name: "CEI",
            path: "Sources/CEI",
            linkerSettings: [
                .linkedLibrary("ei"),
                // A no-op on glibc >= 2.34, where libpthread lives in libc; kept for older libcs.
                .linkedLibrary("pthread"),
            ]
        ),
        .target(name: "CLinux", path: "Sources/CLinux"),
        .systemLibrary(
            name: "COpenSSL",
            path: "Sources/COpenSSL",
            pkgConfig: "openssl",
            providers: [.apt(["libssl-dev"])]
        ),
        // The edge's XML stream parser: pure Swift, no C node, so tools and fuzzers use it alone.
        .target(name: "MegaphoneXML", path: "Sources/MegaphoneXML"),
        // Prints the events the parser gives for files (the differential test against fxml runs it).
        .executableTarget(
            name: "megaphone-xml-events",
            dependencies: ["MegaphoneXML"],
            path: "Sources/megaphone-xml-events"
        ),
        .target(
            name: "MegaphoneCore",
            dependencies: [
                "MegaphoneXML",
                "CEI",
                "CLinux",
                "COpenSSL",
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Sources/MegaphoneCore"
        ),
        .executableTarget(
            name: "megaphone",
            dependencies: [
                "MegaphoneCore",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            path: "Sources/megaphone"
        ),
        // The XMPP load client (issue 14): one epoll loop, many sessions, a line protocol on stdin/stdout.
        // It reuses the node's System layer (Epoll, Socket, syscall), which is `package` for it.
        .target(
            name: "MegaphoneLoad",
            dependencies: [
                "MegaphoneCore",
                "MegaphoneXML",
                "CLinux",
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Sources/MegaphoneLoad"
        ),
        .executableTarget(
            name: "megaphone-load",
            dependencies: [
                "MegaphoneLoad",
                "MegaphoneCore",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            path: "Sources/megaphone-load"
        ),
        .testTarget(
            name: "MegaphoneLoadTests",
            dependencies: ["MegaphoneLoad", "MegaphoneCore", "MegaphoneXML"],
            path: "Tests/MegaphoneLoadTests"
        ),
        .testTarget(
            name: "MegaphoneCoreTests",
            dependencies: ["MegaphoneCore", "MegaphoneXML", "COpenSSL"],
            path: "Tests/MegaphoneCoreTests"
        ),
    ],
    swiftLanguageModes: [.v6]
)
