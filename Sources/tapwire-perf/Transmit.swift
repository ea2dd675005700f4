import Glibc
import ArgumentParser
import SystemCalls
import VhostUserFrontend

struct Transmit: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Play a guest that transmits as fast as the backend takes frames.",
        discussion: """
        Keeps the TX ring full: every chain the backend returns used is re-posted at once. The
        frames are built once (no allocation per frame). At the end posting stops and the tool
        waits until every posted chain came back used ("no frame lost"); it exits 2 if one did
        not. With --tap NAME (run the tool in the TAP's network namespace) it also checks that
        every completed frame reached the TAP (rx_packets), and reports the TAP's rx rate.

        Examples:
          tapwire-perf transmit --socket /tmp/vm.sock --frame-size 64 --duration 5
          ip netns exec ns1 tapwire-perf transmit --socket /tmp/vm.sock --tso --tap tw0 --warmup 1 --json
        """)

    @OptionGroup var measurement: MeasurementWindow

    @Option(help: "Frame size in bytes without the 12-byte virtio-net header (EtherType 0x88B5, broadcast).")
    var frameSize: Int = 1514

    @Flag(help: "Send 64 KiB TCP/IPv4 TSO frames (GSO_TCPV4, NEEDS_CSUM) instead of plain frames.")
    var tso = false

    @Option(help: "TCP payload of a TSO frame (45 x 1448 by default).")
    var tsoPayload: Int = 65160

    @Option(help: "MSS of the TSO frames (gso_size).")
    var mss: Int = 1448

    @Option(help: "Virtqueue size (a power of two); every descriptor carries one frame.")
    var queueSize: UInt16 = 256

    @Option(help: "A TAP in this network namespace: report its rx rate and check every completed frame reached it.")
    var tap: String?

    @Flag(help: "Spin on the used ring instead of sleeping on the call eventfd.")
    var busyPoll = false

    @Option(help: "Seconds to wait for the last chains to come back used.")
    var drainTimeout: Double = 30

    func validate() throws {
        if !tso && (frameSize < Frames.minimumPlainLength || frameSize > 65535) {
            throw ValidationError("--frame-size must be between \(Frames.minimumPlainLength) and 65535")
        }
        if tso && (tsoPayload < 1 || tsoPayload > 65495) { throw ValidationError("--tso-payload must be between 1 and 65495") }
        if tso && (mss < 88 || mss > 65535) { throw ValidationError("--mss must be between 88 and 65535") }
    }

    func run() throws {
        Interrupt.install()
        let header: [UInt8], frame: [UInt8]
        if tso {
            (header, frame) = Frames.tso(payload: tsoPayload, mss: UInt16(mss))
        } else {
            header = [UInt8](repeating: 0, count: 12)
            frame = Frames.plain(length: frameSize)
        }
        let slotBytes = (12 + frame.count + 63) & ~63
        let size = Int(queueSize)
        let (frontend, features) = try connectFrontend(socket: measurement.socket, memoryBytes: arenaBytes(payloadBytes: size * slotBytes),
                                                       wanted: ~0, queueSize: queueSize)
        guard Feature.headerSize(features) == 12 else { throw ToolError("backend did not negotiate VERSION_1 (10-byte header)") }
        if tso && features & (Feature.csum | Feature.hostTSO4) != (Feature.csum | Feature.hostTSO4) {
            throw ToolError("--tso: the backend did not offer CSUM and HOST_TSO4 (features 0x\(String(features, radix: 16)))")
        }
        guard let queue = frontend.queues[1] else { throw ToolError("no TX queue") }
        var ring = RingDriver(queue: queue, eventIndex: features & Feature.eventIndex != 0)
        let frameBytes = UInt64(frame.count)
        for i in 0..<size {
            let address = frontend.arena.allocate(slotBytes)
            frontend.arena.write(header + frame, at: address)
            ring.setDescriptor(UInt16(i), address: address, length: UInt32(12 + frame.count), writable: false)
        }
        let tapBefore = try tap.map { try requireInterface($0) }

        var posted: UInt64 = 0, completed: UInt64 = 0, sleeps: UInt64 = 0
        // The longest time without a completion inside the window, and how often one took
        // over 10 ms: tells a backend that stalls (or is starved of CPU) from a steady one.
        var lastCompletion: UInt64 = 0, maxGap: UInt64 = 0, gapsOver10ms: UInt64 = 0
        let start = now()
        let windowStart = start + UInt64(measurement.warmup * 1e9)
        let end = windowStart + UInt64(measurement.duration * 1e9)
        var windowOpened = false
        var window = (t: start, completed: UInt64(0), tap: InterfaceCounters())
        var windowEnd = (t: start, completed: UInt64(0), tap: InterfaceCounters())
        for i in 0..<size { ring.push(UInt16(i)) }
        posted = UInt64(size)
        ring.publishAndKick()
        var iterations: UInt32 = 0
        while true {
            iterations &+= 1
            if iterations & 15 == 0 || !windowOpened {
                let t = now()
                if !windowOpened && t >= windowStart {
                    windowOpened = true
                    window = (t, completed, tap.flatMap(InterfaceCounters.read) ?? InterfaceCounters())
                }
                if t >= end || Interrupt.isRequested {
                    windowEnd = (t, completed, tap.flatMap(InterfaceCounters.read) ?? InterfaceCounters())
                    break
                }
            }
            let usedIndex = ring.usedIndex()
            if usedIndex != ring.lastUsed {
                var n: UInt64 = 0
                while ring.lastUsed != usedIndex {
                    let entry = ring.takeUsed()
                    ring.push(entry.head)
                    n += 1
                }
                completed &+= n
                posted &+= n
                ring.publishAndKick()
                if windowOpened {
                    let t = now()
                    if lastCompletion != 0 {
                        let gap = t &- lastCompletion
                        if gap > maxGap { maxGap = gap }
                        if gap > 10_000_000 { gapsOver10ms &+= 1 }
                    }
                    lastCompletion = t
                }
            } else if !busyPoll {
                if !ring.armInterrupt() {
                    sleeps &+= 1
                    ring.waitForCall(timeoutMilliseconds: 20)
                }
                iterations = 15 // look at the clock after every sleep
            }
        }
        // Drain: no more posts; every chain in flight must come back.
        let drainDeadline = now() + UInt64(drainTimeout * 1e9)
        while ring.inFlight > 0 && now() < drainDeadline {
            let usedIndex = ring.usedIndex()
            if usedIndex != ring.lastUsed {
                while ring.lastUsed != usedIndex { _ = ring.takeUsed(); completed &+= 1 }
            } else if !ring.armInterrupt() {
                ring.waitForCall(timeoutMilliseconds: 20)
            }
        }
        let finished = now()
        let tapAfter = try tap.map { try requireInterface($0) }
        let allReturned = posted == completed

        let windowSeconds = seconds(windowEnd.t - window.t)
        let windowFrames = windowEnd.completed - window.completed
        let totalSeconds = seconds(windowEnd.t - start)
        var out = JSONObject()
        out.add("mode", tso ? "tso" : "plain")
        out.add("frame_bytes", Int(frameBytes))
        out.add("queue_size", size)
        out.add("features", "0x" + String(features, radix: 16))
        out.add("event_idx", features & Feature.eventIndex != 0)
        out.add("seconds", totalSeconds)
        out.add("posted", posted)
        out.add("completed", completed)
        out.add("all_returned", allReturned)
        out.add("drain_seconds", seconds(finished - windowEnd.t))
        out.add("frames_per_second", Double(windowEnd.completed) / totalSeconds, digits: 1)
        out.add("bits_per_second", Double(windowEnd.completed * frameBytes) * 8 / totalSeconds, digits: 0)
        out.add("window_seconds", windowSeconds, digits: 6)
        out.add("window_frames", windowFrames)
        out.add("window_frames_per_second", Double(windowFrames) / windowSeconds, digits: 1)
        out.add("window_bits_per_second", Double(windowFrames * frameBytes) * 8 / windowSeconds, digits: 0)
        out.add("kicks", ring.kicks)
        out.add("kicks_suppressed", ring.kicksSuppressed)
        out.add("sleeps", sleeps)
        out.add("max_completion_gap_ms", Double(maxGap) / 1e6)
        out.add("completion_gaps_over_10ms", gapsOver10ms)
        var tapLost: Int64 = 0
        if let tap, let tapBefore, let tapAfter {
            let whole = tapAfter - tapBefore
            let inWindow = windowEnd.tap - window.tap
            tapLost = Int64(bitPattern: completed &- whole.rxPackets)
            out.add("tap", tap)
            out.add("tap_rx_packets", whole.rxPackets)
            out.add("tap_rx_bytes", whole.rxBytes)
            out.add("tap_rx_dropped", whole.rxDropped)
            out.add("tap_window_rx_packets", inWindow.rxPackets)
            out.add("tap_window_rx_bytes", inWindow.rxBytes)
            out.add("tap_window_bits_per_second", Double(inWindow.rxBytes) * 8 / windowSeconds, digits: 0)
            out.add("tap_window_frames_per_second", Double(inWindow.rxPackets) / windowSeconds, digits: 1)
            out.add("completed_not_on_tap", tapLost)
        }
        let ok = allReturned && tapLost == 0
        out.add("no_frame_lost", ok)
        if measurement.json {
            print(out.text)
        } else {
            print("transmit: \(tso ? "TSO \(frameBytes)-byte TCP/IPv4 frames (MSS \(mss))" : "\(frameBytes)-byte frames"), queue \(size), event idx \(ring.eventIndex ? "on" : "off")")
            print("  posted \(posted), completed \(completed) in \(fixed(totalSeconds, 3)) s: \(humanRate(Double(windowEnd.completed) / totalSeconds, unit: "frames/s")), \(humanRate(Double(windowEnd.completed * frameBytes) * 8 / totalSeconds, unit: "bit/s"))")
            print("  window \(fixed(windowSeconds, 3)) s after \(fixed(measurement.warmup, 1)) s warm-up: \(windowFrames) frames, \(humanRate(Double(windowFrames) / windowSeconds, unit: "frames/s")), \(humanRate(Double(windowFrames * frameBytes) * 8 / windowSeconds, unit: "bit/s"))")
            print("  kicks \(ring.kicks) (suppressed \(ring.kicksSuppressed)), sleeps on the call eventfd \(sleeps), longest gap between completions \(fixed(Double(maxGap) / 1e6, 3)) ms (\(gapsOver10ms) over 10 ms)")
            if let tap, let tapBefore, let tapAfter {
                let whole = tapAfter - tapBefore
                let inWindow = windowEnd.tap - window.tap
                print("  \(tap) rx: \(whole.rxPackets) frames, \(whole.rxBytes) bytes; window \(humanRate(Double(inWindow.rxBytes) * 8 / windowSeconds, unit: "bit/s"))")
            }
            print("  no frame lost: \(ok ? "yes" : "NO") (posted \(posted) == used \(completed)\(tap != nil ? ", completed - TAP rx = \(tapLost)" : ""))")
        }
        if !ok {
            note("frames lost: posted \(posted), used \(completed)\(tap != nil ? ", completed but not on the TAP \(tapLost)" : "")")
            throw ExitCode(2)
        }
    }
}
