// swift-tools-version:6.0
import PackageDescription

// libFuzzer targets for what Megaphone parses from the outside: the distribution terms (TermReader,
// Request), the plaintext STARTTLS opening (StartTLSNegotiator), the metrics endpoint's HTTP
// request heads (MetricsRequest) and clients' XML streams (MegaphoneXML's XMLStreamParser). A
// package of its own so that the main `swift build`/`swift test` never sees `-sanitize=fuzzer`;
// scripts/fuzz builds each target with
//   swift build -c debug -Xswiftc -sanitize=fuzzer,address -Xswiftc -parse-as-library --product <Target>
// and runs each target for a bounded time over its seed corpus in corpus/<Target>/.
//
// SwiftPM links an executable target's entry point as `<Target>_main`; libFuzzer brings its own
// `main`, so each target defines `<Target>_main` and hands over to `LLVMFuzzerRunDriver` (CFuzzDriver).
let package = Package(
    name: "megaphone-fuzz",
    dependencies: [.package(name: "megaphone", path: "..")],
    targets: [
        .target(name: "CFuzzDriver", path: "Sources/CFuzzDriver"),
        .executableTarget(
            name: "FuzzTerms",
            dependencies: ["CFuzzDriver", .product(name: "MegaphoneCore", package: "megaphone")],
            path: "Sources/FuzzTerms"
        ),
        .executableTarget(
            name: "FuzzRequest",
            dependencies: ["CFuzzDriver", .product(name: "MegaphoneCore", package: "megaphone")],
            path: "Sources/FuzzRequest"
        ),
        .executableTarget(
            name: "FuzzStartTLS",
            dependencies: ["CFuzzDriver", .product(name: "MegaphoneCore", package: "megaphone")],
            path: "Sources/FuzzStartTLS"
        ),
        .executableTarget(
            name: "FuzzMetricsRequest",
            dependencies: ["CFuzzDriver", .product(name: "MegaphoneCore", package: "megaphone")],
            path: "Sources/FuzzMetricsRequest"
        ),
        .executableTarget(
            name: "FuzzXMLStream",
            dependencies: ["CFuzzDriver", .product(name: "MegaphoneXML", package: "megaphone")],
            path: "Sources/FuzzXMLStream"
        ),
    ],
    swiftLanguageModes: [.v6]
)
