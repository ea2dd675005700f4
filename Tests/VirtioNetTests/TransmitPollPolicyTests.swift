import Testing
import VirtioNet

/// When transmit kicks stay off after a burst, with a made-up clock: no ring, no kernel.
@Suite struct TransmitPollPolicyTests {
    let microsecond: UInt64 = 1000
    let start: UInt64 = 5_000_000_000
    let burst = TransmitPollPolicy.burstFrames

    @Test func requestResponseGetsItsKicksBackAtOnce() {
        var policy = TransmitPollPolicy(.adaptive)
        // One frame per service, 70 µs apart (a flood ping's replies): never held.
        for i in 0..<100 {
            let now = start + UInt64(i) * 70 * microsecond
            #expect(policy.holdKicksFrom(now: now) == burst, "a lone frame (fewer than a burst) asks for kicks")
            policy.record(frames: 1, now: now)
        }
    }

    @Test func aBurstHoldsKicksAndAStreamKeepsHoldingThem() {
        var policy = TransmitPollPolicy(.adaptive)
        #expect(policy.holdKicksFrom(now: start) == burst, "no history: only a burst holds")
        policy.record(frames: 8, now: start)
        #expect(policy.holdKicksFrom(now: start + 300 * microsecond) == 1, "streaming: any frame holds, as the fixed mode")
        // A look that finds a single frame within the stream does not end it.
        policy.record(frames: 1, now: start + 300 * microsecond)
        #expect(policy.holdKicksFrom(now: start + 600 * microsecond) == 1)
        #expect(policy.pollNanoseconds == UInt64(TransmitPollPolicy.adaptivePollMicroseconds) * microsecond)
    }

    @Test func aStreamThatTurnsIntoRequestsStopsHolding() {
        var policy = TransmitPollPolicy(.adaptive)
        policy.record(frames: 16, now: start)
        var now = start
        var services = 0
        while policy.holdKicksFrom(now: now) == 1 {
            now += 50 * microsecond
            policy.record(frames: 1, now: now)
            services += 1
            try! #require(services < 64, "the average must decay")
        }
        #expect(services > 1, "one lone frame does not end a stream")
    }

    @Test func aQuietGapForgetsTheStream() {
        var policy = TransmitPollPolicy(.adaptive)
        policy.record(frames: 64, now: start)
        let later = start + policy.pollNanoseconds + 1
        #expect(policy.holdKicksFrom(now: later) == burst, "longer quiet than the poll delay: the history is stale")
        policy.record(frames: 1, now: later)
        #expect(policy.averageFrames == 16, "restarted from the last service alone (1 frame, in 1/16ths)")
    }

    @Test func emptyLooksLeaveTheHistoryAlone() {
        var policy = TransmitPollPolicy(.adaptive)
        policy.record(frames: 4, now: start)
        let before = policy
        policy.record(frames: 0, now: start + 10 * microsecond)
        #expect(policy == before)
    }

    @Test func fixedAndOffKeepTheirMeaning() {
        var fixed = TransmitPollPolicy(.fixed(microseconds: 300))
        #expect(fixed.pollNanoseconds == 300 * microsecond)
        fixed.record(frames: 1, now: start)
        #expect(fixed.holdKicksFrom(now: start + microsecond) == 1, "fixed: every service that moved frames holds")
        let off = TransmitPollPolicy(.off)
        #expect(off.pollNanoseconds == 0)
        #expect(off.holdKicksFrom(now: start) == Int.max, "off: never holds")
        #expect(TransmitPollPolicy(.fixed(microseconds: 0)).holdKicksFrom(now: start) == Int.max, "0 means off")
        #expect(TransmitPollPolicy(.fixed(microseconds: -5)).pollNanoseconds == 0, "negative means off")
    }

    @Test func theConfigMapsItsMicroseconds() {
        #expect(NetDeviceConfig().transmitPollPolicy.mode == .adaptive, "adaptive by default")
        #expect(NetDeviceConfig(transmitPollMicroseconds: 0).transmitPollPolicy.mode == .off)
        #expect(NetDeviceConfig(transmitPollMicroseconds: 250).transmitPollPolicy.mode == .fixed(microseconds: 250))
    }
}
