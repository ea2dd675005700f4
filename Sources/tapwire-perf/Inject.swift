import Glibc
import ArgumentParser
import SystemCalls

struct Inject: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Host-side packet generator: send frames into a TAP (towards the guest) with AF_PACKET.",
        discussion: """
        Writes broadcast frames with EtherType 0x88B5 into the TAP through an AF_PACKET socket
        with the qdisc bypassed, so the TAP's backend (tapwire or DPDK's TAP PMD) reads them and
        hands them to the guest. Run it in the TAP's network namespace. The TAP's tx_packets
        counts the frames the backend read, tx_dropped the ones the kernel dropped because the
        backend's queue was full.
        """)

    @Option(help: "The TAP to send into (in this network namespace).")
    var tap: String

    @Option(help: "Frame size in bytes.")
    var frameSize: Int = 64

    @Option(help: "Seconds to send.")
    var duration: Double = 5

    @Option(help: "Frames per second (0: as fast as possible).")
    var pps: Double = 0

    @Flag(help: "Print one JSON object on stdout.")
    var json = false

    func validate() throws {
        if frameSize < Frames.minimumPlainLength || frameSize > 65535 {
            throw ValidationError("--frame-size must be between \(Frames.minimumPlainLength) and 65535")
        }
        if duration <= 0 || pps < 0 { throw ValidationError("--duration must be positive and --pps not negative") }
    }

    func run() throws {
        Interrupt.install()
        let socket = try PacketSocket(interface: tap, ignoreOutgoing: true, bypassQdisc: true)
        let frame = Frames.plain(length: frameSize)
        let before = try requireInterface(tap)
        var sent: UInt64 = 0, failed: UInt64 = 0
        var lastError: Int32 = 0
        let start = now()
        let end = start + UInt64(duration * 1e9)
        var t = start
        frame.withUnsafeBytes { bytes in
            let pointer = bytes.baseAddress!
            let count = bytes.count
            while t < end && !Interrupt.isRequested {
                var burst = 64
                if pps > 0 {
                    let due = UInt64(Double(t - start) * pps / 1e9)
                    if due <= sent &+ failed {
                        usleep(50)
                        t = now()
                        continue
                    }
                    burst = Int(min(due - (sent &+ failed), 64))
                }
                for _ in 0..<burst {
                    let n = socket.send(pointer, count: count)
                    if n == count { sent &+= 1 } else { failed &+= 1; lastError = Int32(-n) }
                }
                t = now()
            }
        }
        let elapsed = seconds(t - start)
        // Let the backend read what is still queued before the counters are taken.
        usleep(200_000)
        let d = (try requireInterface(tap)) - before
        var out = JSONObject()
        out.add("tap", tap)
        out.add("frame_bytes", frame.count)
        out.add("seconds", elapsed)
        out.add("sent", sent)
        out.add("send_errors", failed)
        out.add("frames_per_second", Double(sent) / elapsed, digits: 1)
        out.add("tap_tx_packets", d.txPackets)
        out.add("tap_tx_dropped", d.txDropped)
        out.add("tap_tx_packets_per_second", Double(d.txPackets) / elapsed, digits: 1)
        if json {
            print(out.text)
        } else {
            print("inject: \(sent) frames of \(frame.count) bytes into \(tap) in \(fixed(elapsed, 3)) s (\(humanRate(Double(sent) / elapsed, unit: "frames/s")))\(failed > 0 ? ", \(failed) send errors (last: \(String(cString: strerror(lastError))))" : "")")
            print("  \(tap) tx: \(d.txPackets) frames read by the backend, \(d.txDropped) dropped by the kernel")
        }
    }
}
