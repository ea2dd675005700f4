// Allocation counts of tapwire's packet path. Each iteration moves one batch of 64-byte frames
// through a production NetDevice; only the device's service calls are inside the measured
// region (startMeasurement/stopMeasurement), so the guest's side and the injector cannot add
// to the count, and warm-up iterations are excluded. Tools/bench-alloc.sh runs this in a
// private network namespace and fails if any iteration allocates.
import Benchmark
import Glibc
import SystemCalls
import TapDevice
import VirtioNet

/// One full transmit ring, and the device's per-call batch budget.
let framesPerIteration = 256

/// Frames the iteration really moved (checked, not assumed), so per-frame figures divide by
/// what happened.
let framesMetric = BenchmarkMetric.custom("frames", polarity: .prefersLarger, useScalingFactor: false)

/// Holds what setup made for the iteration and teardown closures to share.
final class BenchmarkState {
    var device: DeviceUnderTest?
    var injector: FrameInjector?
    var tapPacketsAtStart: UInt64 = 0
    var framesMoved: UInt64 = 0
}

let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(
        // No retain/release counts: on Linux with Swift 6.3 the runtime's retain hook they need
        // can crash the process (ordo-one/benchmark#349, swiftlang/swift#87696); the fix, the
        // RuntimeInterposer trait, needs a package the mirror does not have.
        metrics: [.mallocCountTotal, .mallocBytesCount, .wallClock, framesMetric],
        timeUnits: .microseconds,
        // Enough for every first-time initialisation (lazy globals, page faults in the rings).
        warmupIterations: 64,
        scalingFactor: .one,
        maxDuration: .seconds(3),
        maxIterations: 2000
    )

    // What "no allocation" reads as: the measured region with nothing in it.
    Benchmark("baseline: empty measured region") { benchmark in
        benchmark.startMeasurement()
        benchmark.stopMeasurement()
        benchmark.measurement(framesMetric, 0)
    }

    // Proof the counter counts: one Swift allocation inside the region must read as exactly one.
    Benchmark("control: one allocation") { benchmark in
        benchmark.startMeasurement()
        blackHole([UInt8](repeating: 0, count: 64))
        benchmark.stopMeasurement()
        benchmark.measurement(framesMetric, 0)
    }

    // The TAP in both of the daemon's modes: io-uring (its default, --tap-io auto, where the
    // kernel allows it) and writev (the fallback: one writev/readv per frame).
    registerTransmit(name: "guest transmit to sink", to: .sink)
    registerTransmit(name: "guest transmit to sink with port security", to: .sink, portSecurity: true)
    registerTransmit(name: "guest transmit to TAP in io-uring mode", to: .tap(name: "twalloc-tx-ring", ioUring: true))
    registerTransmit(name: "guest transmit to TAP in writev mode", to: .tap(name: "twalloc-tx", ioUring: false))
    registerTransmit(name: "guest transmit to TAP in io-uring mode with port security", to: .tap(name: "twalloc-tx-ps", ioUring: true),
                     portSecurity: true)
    // With guest GSO a receive may need several buffers, so reads stay one per frame even in
    // io-uring mode; without it each 2 KiB buffer holds a frame and reads go in batches.
    registerReceive(name: "host to guest from TAP in io-uring mode", tapName: "twalloc-rx-ring", ioUring: true, guestGSO: true)
    registerReceive(name: "host to guest in io-uring batches (no guest GSO)", tapName: "twalloc-rx-bat", ioUring: true, guestGSO: false)
    registerReceive(name: "host to guest from TAP in writev mode", tapName: "twalloc-rx", ioUring: false, guestGSO: true)
    registerReceive(name: "host to guest in io-uring batches with port security", tapName: "twalloc-rx-ps", ioUring: true, guestGSO: false,
                    portSecurity: true)
}

/// Where guest transmit goes.
enum TransmitTarget {
    /// No TAP (--sink): frames are consumed and dropped.
    case sink
    /// A real TAP, its I/O as with --tap-io io-uring or --tap-io writev.
    case tap(name: String, ioUring: Bool)
}

/// Guest transmit: the guest posts a batch, tapwire drains it (to the TAP, or dropped in sink
/// mode) the way its queue-pair worker does: again while the outcome says more work.
func registerTransmit(name: String, to target: TransmitTarget, portSecurity: Bool = false) {
    let state = BenchmarkState()
    Benchmark(name) { benchmark in
        guard let dut = state.device else { return }
        dut.postTransmit(framesPerIteration)
        benchmark.startMeasurement()
        var outcome: ServiceOutcome
        repeat {
            outcome = dut.device.serviceTransmit(pair: 0, now: monotonicNanoseconds(), holdKicks: true)
        } while outcome == .moreWork
        benchmark.stopMeasurement()
        let completed = dut.reclaimTransmit()
        if completed != framesPerIteration {
            benchmark.error("\(name): \(completed) of \(framesPerIteration) frames completed (outcome \(outcome))")
        }
        state.framesMoved += UInt64(completed)
        benchmark.measurement(framesMetric, completed)
    } setup: {
        var tap: Tap?
        if case .tap(let tapName, let ioUring) = target { tap = try openTap(tapName, ioUring: ioUring) }
        state.device = try DeviceUnderTest(tap: tap, portSecurity: portSecurity)
        if let tap { state.tapPacketsAtStart = interfaceStatistic(tap.name, "rx_packets") ?? 0 }
    } teardown: {
        defer { state.device = nil }
        guard let dut = state.device else { return }
        try checkNoDrops(dut.device.queues[1].stats, name: name)
        // Proof the frames reached the kernel: the TAP's receive counter (what the guest sends
        // arrives on the host as received on the TAP).
        if let tap = dut.tap {
            let received = (interfaceStatistic(tap.name, "rx_packets") ?? 0) - state.tapPacketsAtStart
            guard received >= state.framesMoved else {
                throw BenchmarkSetupError("\(name): the TAP counted \(received) frames of \(state.framesMoved) sent")
            }
        }
    }
}

/// Host to guest: a batch is injected into the TAP before the measured region; tapwire reads it
/// into the guest's receive buffers; the guest then takes the frames and posts the buffers again.
func registerReceive(name: String, tapName: String, ioUring: Bool, guestGSO: Bool, portSecurity: Bool = false) {
    let state = BenchmarkState()
    Benchmark(name) { benchmark in
        guard let dut = state.device, let injector = state.injector else { return }
        let injected = injector.send(framesPerIteration)
        benchmark.startMeasurement()
        var outcome: ServiceOutcome
        repeat {
            outcome = dut.device.serviceReceive(pair: 0, now: monotonicNanoseconds())
        } while outcome == .moreWork
        benchmark.stopMeasurement()
        let (frames, unexpected) = dut.reclaimReceive()
        if injected != framesPerIteration || frames != injected || unexpected != 0 {
            benchmark.error("\(name): injected \(injected), delivered \(frames), unexpected \(unexpected) (outcome \(outcome))")
        }
        state.framesMoved += UInt64(frames)
        benchmark.measurement(framesMetric, frames)
    } setup: {
        let tap = try openTap(tapName, ioUring: ioUring)
        let dut = try DeviceUnderTest(tap: tap, guestGSO: guestGSO, portSecurity: portSecurity)
        dut.postAllReceiveBuffers()
        state.injector = try FrameInjector(interface: tap.name, frame: DeviceUnderTest.ethernetFrame())
        state.device = dut
    } teardown: {
        defer {
            state.device = nil
            state.injector = nil
        }
        guard let dut = state.device else { return }
        let stats = dut.device.queues[0].stats
        try checkNoDrops(stats, name: name)
        // The path named is the path measured: batched reads happen only where promised.
        let batched = ioUring && !guestGSO
        guard (stats.tapBatches > 0) == batched else {
            throw BenchmarkSetupError("\(name): \(stats.tapBatches) io_uring submissions for \(stats.frames) frames, expected \(batched ? "some" : "none")")
        }
    }
}

/// Creates the TAP (needs CAP_NET_ADMIN; the script runs us in a private network namespace) with
/// IPv6 off so the kernel sends nothing of its own into it, and brings it up. With `ioUring`,
/// sets up its io_uring as the daemon's --tap-io io-uring does, before the device exists (a
/// NetDevice takes each queue's ring when it is made).
func openTap(_ name: String, ioUring: Bool) throws -> Tap {
    let tap = try Tap(name: name)
    if ioUring { try tap.enableBatchedIO(entries: 64) }
    let path = "/proc/sys/net/ipv6/conf/\(tap.name)/disable_ipv6"
    let fd = open(path, O_WRONLY | O_CLOEXEC)
    if fd >= 0 {
        _ = write(fd, "1", 1)
        close(fd)
    }
    try tap.setUp()
    return tap
}

/// Every frame counted must have gone through: a drop would mean the path measured was an
/// error path.
func checkNoDrops(_ stats: QueueStats, name: String) throws {
    guard stats.totalDrops == 0 else {
        let reasons = DropReason.allCases.filter { stats.drops($0) > 0 }.map { "\($0.label)=\(stats.drops($0))" }
        throw BenchmarkSetupError("\(name): the device dropped frames: \(reasons.joined(separator: " "))")
    }
}
