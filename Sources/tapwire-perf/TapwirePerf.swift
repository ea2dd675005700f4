import ArgumentParser

/// `tapwire-perf`: a vhost-user frontend (it plays the guest) for load, rate and latency
/// measurements of tapwire or any other vhost-user net backend.
@main
struct TapwirePerf: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tapwire-perf",
        abstract: "Load, rate-limit and latency measurements against a vhost-user net backend.",
        discussion: """
        The tool connects to the backend's unix socket as the frontend (as QEMU would), with its
        own guest memory (a memfd) and split rings, and drives them without a VM:
          transmit  keep the TX ring full and report frames/s and bit/s (no frame lost check)
          receive   keep RX buffers posted and count what arrives
          latency   round trips guest -> TAP -> guest (the tool echoes on the TAP), HdrHistogram
          inject    host-side generator: frames into a TAP with AF_PACKET
        Results go to stdout (--json for one JSON object), progress and errors to stderr.
        """,
        subcommands: [Transmit.self, Receive.self, Latency.self, Inject.self])
}
