/// Whether a queue pair keeps guest transmit kicks off after a service empties the ring, and
/// when it looks again (as NAPI keeps a NIC's interrupts off while it polls). Keeping kicks
/// off spares a streaming guest an exit per frame, which is what costs a TCG guest most; but a
/// request sent while they are off waits for the look. So the adaptive mode, like net_dim,
/// judges by what the last services found: a stream moves several frames per service (or
/// came back soon after one that did); request/response traffic moves one frame at a time,
/// and gets its kicks back at once.
/// Pure logic: the worker asks before each service and reports what it moved.
public struct TransmitPollPolicy: Sendable, Equatable {
    public enum Mode: Sendable, Equatable {
        /// Never hold kicks (`--tx-poll 0`).
        case off
        /// Hold after every service that moved frames, look again after this long (`--tx-poll N`).
        case fixed(microseconds: Int)
        /// Hold only while traffic streams (the default, `--tx-poll auto`).
        case adaptive
    }

    /// The adaptive mode's look-again delay: the fixed default it replaces, chosen on this
    /// machine (a TCG guest posts a 64 KiB frame in tens of microseconds).
    public static let adaptivePollMicroseconds = 300
    /// A service that moves at least this many frames is part of a burst; one that moves
    /// fewer, in traffic whose recent services averaged fewer, is a lone request.
    public static let burstFrames = 2
    /// The running average of frames per service, in 1/`averageScale` frames.
    static let averageScale: UInt64 = 16
    /// The average moves a 1/2^`averageShift` part of the way to each new service's count.
    static let averageShift: UInt64 = 2

    public let mode: Mode
    /// How long after a drained service the ring is looked at again (0: kicks never held).
    public let pollNanoseconds: UInt64
    /// Frames per service that moved any, averaged (in 1/`averageScale` frames).
    public private(set) var averageFrames: UInt64 = 0
    /// When the last service that moved frames ran (monotonic ns; 0: none yet).
    public private(set) var lastFrames: UInt64 = 0

    public init(_ mode: Mode) {
        self.mode = mode
        switch mode {
        case .off: pollNanoseconds = 0
        // At most 10 s, as the other holds.
        case .fixed(let micros): pollNanoseconds = UInt64(min(max(micros, 0), 10_000_000)) * 1000
        case .adaptive: pollNanoseconds = UInt64(Self.adaptivePollMicroseconds) * 1000
        }
    }

    /// The fewest frames the coming service must move for kicks to stay off after it
    /// (`Int.max`: ask for kicks whatever it moves). Fixed: any frame. Adaptive: any frame
    /// while recent services averaged a burst, else a burst. Traffic quiet for longer than
    /// the poll delay starts afresh: its history says nothing about the next frame.
    @inline(__always)
    public func holdKicksFrom(now: UInt64) -> Int {
        switch mode {
        case .off:
            return Int.max
        case .fixed:
            return pollNanoseconds == 0 ? Int.max : 1
        case .adaptive:
            let streaming = lastFrames != 0 && now &- lastFrames <= pollNanoseconds
                && averageFrames >= UInt64(Self.burstFrames) * Self.averageScale
            return streaming ? 1 : Self.burstFrames
        }
    }

    /// What a transmit service moved, at `now`. Services that moved nothing (a look that
    /// found the ring empty) leave the history alone.
    @inline(__always)
    public mutating func record(frames: Int, now: UInt64) {
        guard frames > 0, case .adaptive = mode else { return }
        Self.update(&averageFrames, &lastFrames, frames: frames, now: now, window: pollNanoseconds)
    }

    /// Moves `average` a part of the way to `frames`, or restarts it from there after a
    /// quiet gap longer than `window`.
    @inline(__always)
    static func update(_ average: inout UInt64, _ last: inout UInt64, frames: Int, now: UInt64, window: UInt64) {
        let scaled = UInt64(min(frames, 1 << 20)) * averageScale
        if last == 0 || now &- last > window {
            average = scaled
        } else if scaled >= average {
            average += (scaled - average) >> averageShift
        } else {
            average -= (average - scaled) >> averageShift
        }
        last = now
    }
}
