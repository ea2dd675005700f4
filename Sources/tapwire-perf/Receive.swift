import Glibc
import ArgumentParser
import SystemCalls
import VhostUserFrontend

struct Receive: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Play a guest that receives: keep RX buffers posted and count what arrives.",
        discussion: """
        Something else has to put frames into the TAP (e.g. `tapwire-perf inject` in the TAP's
        network namespace). Without --mergeable the tool negotiates neither MRG_RXBUF nor the
        guest GSO offloads, so one buffer holds one frame; with --mergeable it acks everything
        offered (as a Linux guest does) and counts a frame per num_buffers chains.
        """)

    @OptionGroup var measurement: MeasurementWindow

    @Flag(help: "Negotiate MRG_RXBUF and the guest offloads (frames may span buffers).")
    var mergeable = false

    @Option(help: "Bytes per receive buffer (including the 12-byte header).")
    var bufferSize: Int = 2048

    @Option(help: "Virtqueue size (a power of two).")
    var queueSize: UInt16 = 256

    @Option(help: "A TAP in this network namespace: report its tx counters (frames the backend read, frames the kernel dropped).")
    var tap: String?

    @Flag(help: "Spin on the used ring instead of sleeping on the call eventfd.")
    var busyPoll = false

    func validate() throws {
        if bufferSize < 64 || bufferSize > 1 << 20 { throw ValidationError("--buffer-size must be between 64 and 1048576") }
    }

    func run() throws {
        Interrupt.install()
        let size = Int(queueSize)
        let slotBytes = (bufferSize + 63) & ~63
        let wanted: UInt64 = mergeable ? ~0 : ~(Feature.mergeableRxBuffers | Feature.guestLargeReceive)
        let (frontend, features) = try connectFrontend(socket: measurement.socket, memoryBytes: arenaBytes(payloadBytes: size * slotBytes),
                                                       wanted: wanted, queueSize: queueSize)
        let headerSize = Feature.headerSize(features)
        let merged = features & Feature.mergeableRxBuffers != 0
        if !merged && features & Feature.guestLargeReceive == 0 && bufferSize < headerSize + 1518 {
            note("warning: --buffer-size \(bufferSize) is smaller than a full frame (\(headerSize + 1518)); the backend may wait for larger buffers")
        }
        guard let queue = frontend.queues[0] else { throw ToolError("no RX queue") }
        var ring = RingDriver(queue: queue, eventIndex: features & Feature.eventIndex != 0)
        var bufferBase = [UInt64](repeating: 0, count: size)
        for i in 0..<size {
            let address = frontend.arena.allocate(slotBytes)
            bufferBase[i] = address
            ring.setDescriptor(UInt16(i), address: address, length: UInt32(bufferSize), writable: true)
        }
        let tapBefore = try tap.map { try requireInterface($0) }
        let base = frontend.arena.base
        for i in 0..<size { ring.push(UInt16(i)) }
        ring.publishAndKick()

        var frames: UInt64 = 0, bytes: UInt64 = 0, chains: UInt64 = 0, empty: UInt64 = 0, sleeps: UInt64 = 0
        var remainingInFrame = 0
        let start = now()
        let windowStart = start + UInt64(measurement.warmup * 1e9)
        let end = windowStart + UInt64(measurement.duration * 1e9)
        var windowOpened = false
        var window = (t: start, frames: UInt64(0), bytes: UInt64(0))
        var windowEnd = window
        var iterations: UInt32 = 0
        bufferBase.withUnsafeBufferPointer { buffers in
            while true {
                iterations &+= 1
                if iterations & 15 == 0 || !windowOpened {
                    let t = now()
                    if !windowOpened && t >= windowStart {
                        windowOpened = true
                        window = (t, frames, bytes)
                    }
                    if t >= end || Interrupt.isRequested {
                        windowEnd = (t, frames, bytes)
                        break
                    }
                }
                let usedIndex = ring.usedIndex()
                if usedIndex != ring.lastUsed {
                    while ring.lastUsed != usedIndex {
                        let entry = ring.takeUsed()
                        chains &+= 1
                        let length = Int(entry.length)
                        if remainingInFrame > 0 {
                            remainingInFrame -= 1
                            bytes &+= UInt64(length)
                        } else if length == 0 {
                            empty &+= 1 // a buffer the backend gave back unused
                        } else {
                            frames &+= 1
                            bytes &+= UInt64(max(length - headerSize, 0))
                            if merged {
                                let numBuffers = (base + Int(buffers[Int(entry.head)]) + 10).loadUnaligned(as: UInt16.self)
                                remainingInFrame = max(Int(numBuffers) - 1, 0)
                            }
                        }
                        ring.push(entry.head)
                    }
                    ring.publishAndKick()
                } else if !busyPoll {
                    if !ring.armInterrupt() {
                        sleeps &+= 1
                        ring.waitForCall(timeoutMilliseconds: 20)
                    }
                    iterations = 15
                }
            }
        }
        let tapAfter = try tap.map { try requireInterface($0) }
        let totalSeconds = seconds(windowEnd.t - start)
        let windowSeconds = seconds(windowEnd.t - window.t)
        let windowFrames = windowEnd.frames - window.frames
        let windowBytes = windowEnd.bytes - window.bytes
        var out = JSONObject()
        out.add("mergeable", merged)
        out.add("features", "0x" + String(features, radix: 16))
        out.add("buffer_bytes", bufferSize)
        out.add("queue_size", size)
        out.add("seconds", totalSeconds)
        out.add("frames", windowEnd.frames)
        out.add("bytes", windowEnd.bytes)
        out.add("chains", chains)
        out.add("empty_chains", empty)
        out.add("frames_per_second", Double(windowEnd.frames) / totalSeconds, digits: 1)
        out.add("bits_per_second", Double(windowEnd.bytes) * 8 / totalSeconds, digits: 0)
        out.add("window_seconds", windowSeconds, digits: 6)
        out.add("window_frames", windowFrames)
        out.add("window_frames_per_second", Double(windowFrames) / windowSeconds, digits: 1)
        out.add("window_bits_per_second", Double(windowBytes) * 8 / windowSeconds, digits: 0)
        out.add("kicks", ring.kicks)
        out.add("sleeps", sleeps)
        if let tap, let tapBefore, let tapAfter {
            let d = tapAfter - tapBefore
            out.add("tap", tap)
            out.add("tap_tx_packets", d.txPackets)
            out.add("tap_tx_dropped", d.txDropped)
        }
        if measurement.json {
            print(out.text)
        } else {
            print("receive: \(merged ? "mergeable" : "one buffer per frame"), \(bufferSize)-byte buffers, queue \(size)")
            print("  \(windowEnd.frames) frames, \(windowEnd.bytes) bytes in \(fixed(totalSeconds, 3)) s: \(humanRate(Double(windowEnd.frames) / totalSeconds, unit: "frames/s")), \(humanRate(Double(windowEnd.bytes) * 8 / totalSeconds, unit: "bit/s"))")
            print("  window \(fixed(windowSeconds, 3)) s: \(windowFrames) frames, \(humanRate(Double(windowFrames) / windowSeconds, unit: "frames/s")), \(humanRate(Double(windowBytes) * 8 / windowSeconds, unit: "bit/s"))")
            if let tap, let tapBefore, let tapAfter {
                let d = tapAfter - tapBefore
                print("  \(tap) tx: \(d.txPackets) frames read by the backend, \(d.txDropped) dropped by the kernel (queue full)")
            }
        }
    }
}
