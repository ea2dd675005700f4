// swift-tools-version:6.1
// tapwire: a vhost-user virtio-net backend that moves a guest's frames to a host TAP device.
// One target per responsibility; the pure logic (guest memory, virtqueue, message codec,
// rate limiter) has no kernel dependency so its tests run anywhere.
import PackageDescription

let package = Package(
    name: "tapwire",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "tapwire", targets: ["tapwire"]),
        .executable(name: "tapwirectl", targets: ["tapwirectl"]),
        .executable(name: "tapwire-perf", targets: ["tapwire-perf"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift", from: "0.2.0"),
    ],
    targets: [
        // Kernel ABI Swift cannot import: ioctls, CMSG macros, wire structs, ring atomics.
        .target(name: "CTapwire"),
        // libcap-ng, for dropping capabilities after start-up.
        .systemLibrary(name: "CCapNG", pkgConfig: "libcap-ng",
                       providers: [.apt(["libcap-ng-dev"])]),
        // libseccomp, for the system-call allow-list the daemon runs under after start-up.
        .systemLibrary(name: "CSeccomp", pkgConfig: "libseccomp",
                       providers: [.apt(["libseccomp-dev"])]),
        // The syscall layer the device uses: owned fds, typed errno, epoll, eventfd, io_uring, ...
        .target(name: "SystemCalls", dependencies: ["CTapwire"]),
        // Guest memory regions and bounds-checked address translation (no syscalls).
        .target(name: "GuestMemory", dependencies: ["CTapwire"]),
        // Split and packed virtqueues: descriptor chains, indirect tables, event suppression (no syscalls).
        .target(name: "Virtqueue", dependencies: ["GuestMemory", "CTapwire"]),
        // vhost-user wire format, validation, connection and request dispatch.
        .target(name: "VhostUser", dependencies: ["CTapwire", "SystemCalls", "GuestMemory",
                                                  .product(name: "Logging", package: "swift-log")]),
        // Port security: which frames a VM may send and receive at its vNIC (no syscalls).
        .target(name: "PortSecurity"),
        // Token buckets with an injected clock (no syscalls).
        .target(name: "RateLimiter"),
        // The host TAP device.
        .target(name: "TapDevice", dependencies: ["CTapwire", "SystemCalls"]),
        // The virtio-net device: features, offloads, TX and RX paths.
        .target(name: "VirtioNet", dependencies: ["CTapwire", "SystemCalls", "GuestMemory", "Virtqueue",
                                                  "VhostUser", "TapDevice", "RateLimiter", "PortSecurity",
                                                  .product(name: "Logging", package: "swift-log")]),
        // HTTP/1.1 control API on a unix socket, Prometheus text, shared JSON models.
        .target(name: "ControlAPI", dependencies: ["RateLimiter", "PortSecurity",
                                                   .product(name: "NIOCore", package: "swift-nio"),
                                                   .product(name: "NIOPosix", package: "swift-nio"),
                                                   .product(name: "NIOHTTP1", package: "swift-nio"),
                                                   .product(name: "Logging", package: "swift-log")]),
        // Daemon wiring: options, config file, privileges, event loop.
        .target(name: "TapwireDaemon", dependencies: ["CCapNG", "CSeccomp", "SystemCalls", "GuestMemory", "VhostUser", "Virtqueue", "VirtioNet",
                                                      "TapDevice", "RateLimiter", "ControlAPI",
                                                      .product(name: "ArgumentParser", package: "swift-argument-parser"),
                                                      .product(name: "Logging", package: "swift-log")]),
        // A vhost-user frontend (the guest side) for tests, the latency tool and benchmarks.
        .target(name: "VhostUserFrontend", dependencies: ["CTapwire", "SystemCalls", "GuestMemory", "Virtqueue",
                                                          "VhostUser"]),
        .executableTarget(name: "tapwire", dependencies: ["TapwireDaemon"]),
        .executableTarget(name: "tapwirectl", dependencies: ["ControlAPI", "RateLimiter", "PortSecurity",
                                                             .product(name: "ArgumentParser", package: "swift-argument-parser")]),
        .executableTarget(name: "tapwire-perf", dependencies: ["VhostUserFrontend", "SystemCalls", "TapDevice", "CTapwire",
                                                                  .product(name: "Histogram", package: "hdrhistogram-swift"),
                                                                  .product(name: "ArgumentParser", package: "swift-argument-parser")]),

        .testTarget(name: "GuestMemoryTests", dependencies: ["GuestMemory"]),
        .testTarget(name: "VirtqueueTests", dependencies: ["Virtqueue", "GuestMemory", "VhostUserFrontend"]),
        .testTarget(name: "VhostUserTests", dependencies: ["VhostUser", "SystemCalls"]),
        .testTarget(name: "RateLimiterTests", dependencies: ["RateLimiter"]),
        .testTarget(name: "PortSecurityTests", dependencies: ["PortSecurity"]),
        .testTarget(name: "ControlAPITests", dependencies: ["ControlAPI", "RateLimiter",
                                                            .product(name: "Logging", package: "swift-log")]),
        .testTarget(name: "VirtioNetTests", dependencies: ["VirtioNet", "Virtqueue", "GuestMemory"]),
        .testTarget(name: "IntegrationTests", dependencies: ["TapwireDaemon", "VhostUserFrontend", "SystemCalls", "Virtqueue", "VhostUser", "VirtioNet", "CTapwire",
                                                             "TapDevice", "ControlAPI"]),
    ],
    swiftLanguageModes: [.v6]
)
