import Glibc
import ArgumentParser
import Histogram
import SystemCalls
import VhostUserFrontend

struct Latency: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Round-trip time guest -> backend -> TAP -> back to the guest, with HdrHistogram.",
        discussion: """
        The tool plays both ends. As the guest it posts a frame (EtherType 0x88B5, broadcast,
        a sequence number inside) on the TX ring; the backend writes it into the TAP. As the
        host it holds an AF_PACKET socket on the TAP that reads the frame (TAP rx) and writes it
        straight back (TAP tx, qdisc bypassed); the backend delivers it into the guest's RX
        ring. RTT = TX post -> the RX used entry seen by the guest. Needs no IP address, ARP or
        routing, only the TAP: run the tool in the TAP's network namespace
        (`ip netns exec NS tapwire-perf latency ...`); the vhost-user socket is a path, so it is
        reachable from any namespace.

        One frame is in flight at a time. The tool (guest and echo, one thread) sleeps in poll()
        on the RX call eventfd and the packet socket unless --busy-poll, which spins on both so
        that what remains is mostly the backend's and the kernel's share.
        """)

    @Option(help: "The backend's vhost-user socket.")
    var socket: String

    @Option(help: "The backend's TAP (in this network namespace).")
    var tap: String

    @Option(help: "Round trips to measure.")
    var count: Int = 10000

    @Option(help: "Round trips before measuring (not recorded).")
    var warmupCount: Int = 100

    @Option(help: "Microseconds between the start of one round trip and the next (0: back to back).")
    var intervalUs: Int = 0

    @Option(help: "Frame size in bytes (without the virtio-net header).")
    var frameSize: Int = 64

    @Option(help: "Virtqueue size (a power of two).")
    var queueSize: UInt16 = 256

    @Option(help: "Milliseconds after which a round trip counts as lost.")
    var timeoutMs: Int = 1000

    @Flag(help: "Negotiate MRG_RXBUF and the guest offloads (as a Linux guest does).")
    var mergeable = false

    @Flag(help: "Spin instead of sleeping on eventfds and the packet socket.")
    var busyPoll = false

    @Flag(help: "Print one JSON object on stdout.")
    var json = false

    func validate() throws {
        if count < 1 || warmupCount < 0 { throw ValidationError("--count must be positive and --warmup-count not negative") }
        if frameSize < Frames.minimumPlainLength || frameSize > 1514 {
            throw ValidationError("--frame-size must be between \(Frames.minimumPlainLength) and 1514")
        }
        if intervalUs < 0 || timeoutMs < 1 { throw ValidationError("--interval-us must not be negative, --timeout-ms positive") }
    }

    func run() throws {
        Interrupt.install()
        let host = try PacketSocket(interface: tap, ignoreOutgoing: true, bypassQdisc: true)
        let size = Int(queueSize)
        let rxBufferBytes = 2048
        let txSlotBytes = (12 + frameSize + 63) & ~63
        let wanted: UInt64 = mergeable ? ~0 : ~(Feature.mergeableRxBuffers | Feature.guestLargeReceive)
        let (frontend, features) = try connectFrontend(socket: socket,
                                                       memoryBytes: arenaBytes(payloadBytes: size * (rxBufferBytes + txSlotBytes)),
                                                       wanted: wanted, queueSize: queueSize)
        let headerSize = Feature.headerSize(features)
        guard headerSize == 12 else { throw ToolError("backend did not negotiate VERSION_1") }
        guard let rxQueue = frontend.queues[0], let txQueue = frontend.queues[1] else { throw ToolError("no queues") }
        let eventIndex = features & Feature.eventIndex != 0
        var rx = RingDriver(queue: rxQueue, eventIndex: eventIndex)
        var tx = RingDriver(queue: txQueue, eventIndex: eventIndex)
        let base = frontend.arena.base
        var rxBuffers = [UInt64](repeating: 0, count: size)
        var txSlots = [UInt64](repeating: 0, count: size)
        let frame = [UInt8](repeating: 0, count: 12) + Frames.plain(length: frameSize)
        for i in 0..<size {
            rxBuffers[i] = frontend.arena.allocate(rxBufferBytes)
            rx.setDescriptor(UInt16(i), address: rxBuffers[i], length: UInt32(rxBufferBytes), writable: true)
            txSlots[i] = frontend.arena.allocate(txSlotBytes)
            frontend.arena.write(frame, at: txSlots[i])
            tx.setDescriptor(UInt16(i), address: txSlots[i], length: UInt32(frame.count), writable: false)
        }
        for i in 0..<size { rx.push(UInt16(i)) }
        rx.publishAndKick()
        tx.suppressInterrupts()
        // Let the backend see the RX buffers and the TAP settle before the first frame.
        usleep(100_000)

        var histogram = Histogram<UInt64>(lowestDiscernibleValue: 1, highestTrackableValue: 60_000_000_000,
                                          numberOfSignificantValueDigits: .three)
        let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: 65536, alignment: 64)
        defer { scratch.deallocate() }
        var lost = 0, echoed: UInt64 = 0, strays: UInt64 = 0, measured = 0
        let timeout = UInt64(timeoutMs) * 1_000_000
        let interval = UInt64(intervalUs) * 1000
        var fds = [pollfd(fd: host.fd.raw, events: Int16(POLLIN), revents: 0),
                   pollfd(fd: rx.callFD, events: Int16(POLLIN), revents: 0)]
        let total = warmupCount + count
        var nextSend = now()
        let started = nextSend
        var sequence: UInt64 = 0
        while Int(sequence) < total && !Interrupt.isRequested {
            if interval > 0 {
                // Sleep most of the gap, spin the last 100 us (usleep alone overshoots).
                while true {
                    let t = now()
                    if t >= nextSend { break }
                    let left = nextSend - t
                    if left > 200_000 { usleep(UInt32(min((left - 100_000) / 1000, 1_000_000))) }
                }
                nextSend &+= interval
            }
            while tx.hasUsed() { _ = tx.takeUsed() }
            let slot = UInt16(truncatingIfNeeded: Int(sequence) % size)
            (base + Int(txSlots[Int(slot)]) + 12 + Frames.sequenceOffset).storeBytes(of: sequence, as: UInt64.self)
            let sent = now()
            tx.push(slot)
            tx.publishAndKick()
            var arrived: UInt64 = 0
            while true {
                // Host side: echo what the guest sent back into the TAP.
                while true {
                    let n = host.receive(into: scratch)
                    if n <= 0 { break }
                    if Frames.sequence(in: scratch.baseAddress!, count: n) != nil {
                        if host.send(scratch.baseAddress!, count: n) == n { echoed &+= 1 }
                    }
                }
                // Guest side: look for our frame in the RX ring.
                var reposted = false
                while rx.hasUsed() {
                    let entry = rx.takeUsed()
                    let buffer = UnsafeRawPointer(base + Int(rxBuffers[Int(entry.head)]))
                    let length = Int(entry.length) - headerSize
                    if length > 0, let seen = Frames.sequence(in: buffer + headerSize, count: length), seen == sequence {
                        arrived = now()
                    } else {
                        strays &+= 1
                    }
                    rx.push(entry.head)
                    reposted = true
                }
                if reposted { rx.publishAndKick() }
                if arrived != 0 { break }
                let t = now()
                if t &- sent > timeout {
                    lost += 1
                    break
                }
                if busyPoll { continue }
                if rx.armInterrupt() { continue }
                fds[0].revents = 0
                fds[1].revents = 0
                let waitMs = Int32(min((timeout - (t &- sent)) / 1_000_000 + 1, 1000))
                if poll(&fds, 2, waitMs) > 0 && fds[1].revents != 0 { EventFD.drain(rx.callFD) }
            }
            if arrived != 0 && Int(sequence) >= warmupCount {
                _ = histogram.record(arrived &- sent)
                measured += 1
            }
            sequence &+= 1
        }
        let elapsed = seconds(now() - started)
        func us(_ ns: UInt64) -> Double { Double(ns) / 1000 }
        let p50 = histogram.valueAtPercentile(50), p90 = histogram.valueAtPercentile(90)
        let p99 = histogram.valueAtPercentile(99), p999 = histogram.valueAtPercentile(99.9)
        var out = JSONObject()
        out.add("frame_bytes", frameSize)
        out.add("mergeable", features & Feature.mergeableRxBuffers != 0)
        out.add("busy_poll", busyPoll)
        out.add("interval_us", intervalUs)
        out.add("round_trips", measured)
        out.add("lost", lost)
        out.add("echoed", echoed)
        out.add("stray_frames", strays)
        out.add("seconds", elapsed)
        out.add("min_us", us(histogram.min))
        out.add("p50_us", us(p50))
        out.add("p90_us", us(p90))
        out.add("p99_us", us(p99))
        out.add("p99_9_us", us(p999))
        out.add("max_us", us(histogram.max))
        out.add("mean_us", histogram.mean / 1000)
        if json {
            print(out.text)
        } else {
            print("latency: \(measured) round trips of \(frameSize)-byte frames guest -> \(tap) -> guest (\(busyPoll ? "busy polling" : "sleeping on eventfds"), interval \(intervalUs) us), \(lost) lost")
            print("  RTT us: min \(fixed(us(histogram.min))) p50 \(fixed(us(p50))) p90 \(fixed(us(p90))) p99 \(fixed(us(p99))) p99.9 \(fixed(us(p999))) max \(fixed(us(histogram.max))) mean \(fixed(histogram.mean / 1000))")
        }
        if measured == 0 { throw ToolError("no round trip completed (is \(tap) up and attached to the backend?)") }
        if lost > 0 { throw ExitCode(2) }
    }
}
