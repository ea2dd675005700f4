// swift-tools-version:6.1
// Allocation-counting benchmarks of tapwire's packet path (Tools/bench-alloc.sh runs them).
// A package of its own so the benchmark framework and its malloc interposer never reach the
// daemon's build.
//
// The datapath modules are compiled from the main package's own sources through the `Tapwire`
// symlink (-> ../../Sources), so what is measured is exactly the production code. They cannot
// come from `.package(path: "../..")`: the main package exports only executables, and SwiftPM
// refuses a graph in which two packages declare targets of the same name. Once the main
// package has a library product with these targets, the mirrored targets below give way to
// `.product(name:package:)` dependencies on it.
import PackageDescription

/// A main-package target built from its own directory, with the same dependencies as there.
func mirrored(_ name: String, _ dependencies: [Target.Dependency] = []) -> Target {
    .target(name: name, dependencies: dependencies, path: "Tapwire/\(name)")
}

let logging = Target.Dependency.product(name: "Logging", package: "swift-log")

let package = Package(
    name: "tapwire-benchmarks",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(url: "https://github.com/ordo-one/benchmark", from: "1.38.1", traits: ["MallocInterposer"]),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
    ],
    targets: [
        mirrored("CTapwire"),
        mirrored("SystemCalls", ["CTapwire"]),
        mirrored("GuestMemory", ["CTapwire"]),
        mirrored("Virtqueue", ["GuestMemory", "CTapwire"]),
        mirrored("VhostUser", ["CTapwire", "SystemCalls", "GuestMemory", logging]),
        mirrored("RateLimiter"),
        mirrored("PortSecurity"),
        mirrored("TapDevice", ["CTapwire", "SystemCalls"]),
        mirrored("VirtioNet", ["CTapwire", "SystemCalls", "GuestMemory", "Virtqueue", "VhostUser", "TapDevice", "RateLimiter", "PortSecurity", logging]),
        // The test frontend's guest memory and ring layout (the guest's side of the benchmarks).
        mirrored("VhostUserFrontend", ["CTapwire", "SystemCalls", "GuestMemory", "Virtqueue", "VhostUser"]),
        .executableTarget(
            name: "HotPathAllocations",
            dependencies: [
                .product(name: "Benchmark", package: "benchmark"),
                "VirtioNet", "VhostUser", "VhostUserFrontend", "Virtqueue", "TapDevice", "SystemCalls", "CTapwire", "PortSecurity",
                logging,
            ],
            path: "Benchmarks/HotPathAllocations",
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
    ]
)
