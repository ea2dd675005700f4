#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import ControlAPI
import RateLimiter
import Testing

@Suite("LimitUpdate JSON")
struct LimitUpdateTests {
    static let mbit100 = BucketConfig(size: 81920, refillTimeNanoseconds: 6_553_600)

    func decode(_ json: String) throws(ControlAPIError) -> LimitUpdate {
        try ControlJSON.decode(LimitUpdate.self, from: Array(json.utf8))
    }

    @Test func allFormsOfALimit() throws {
        let update = try decode(#"""
            {"tx": {"bandwidth": "100Mbit", "ops": {"size": 8, "refill_time_ns": 8000000}},
             "rx": {"bandwidth": 12500000, "ops": null}}
            """#)
        #expect(update.tx?.bandwidth == .set(Self.mbit100))
        #expect(update.tx?.ops == .set(BucketConfig(size: 8, refillTimeNanoseconds: 8_000_000)))
        // A plain number is bytes/s: 12.5 MB/s is 100 Mbit/s.
        #expect(update.rx?.bandwidth == .set(Self.mbit100))
        #expect(update.rx?.ops == .remove)
    }

    @Test func offAndNullRemoveAndAbsentKeeps() throws {
        let update = try decode(#"{"tx": {"bandwidth": " OFF "}, "rx": "off"}"#)
        #expect(update.tx == DirectionUpdate(bandwidth: .remove, ops: .keep))
        #expect(update.rx == .removeAll)
        #expect(try decode(#"{"tx": null}"#).tx == .removeAll)
        let empty = try decode("{}")
        #expect(empty.tx == nil && empty.rx == nil && empty.isEmpty)
    }

    @Test func rateLimiterConvenienceKeysAreAccepted() throws {
        let update = try decode(#"{"tx": {"bandwidth_rate": "100Mbit", "ops_rate": 1000, "ops_burst": 16}}"#)
        #expect(update.tx?.bandwidth == .set(Self.mbit100))
        #expect(update.tx?.ops == .set(try LimitParser.ops("1000,burst=16", flag: "x")))
    }

    @Test func burstAndOneTimeBurstInFlagSyntax() throws {
        let update = try decode(#"{"rx": {"bandwidth": "1Gbit,burst=1MiB,one-time-burst=10MiB"}}"#)
        guard case .set(let config) = update.rx?.bandwidth else {
            Issue.record("expected a bucket")
            return
        }
        #expect(config.size == 1 << 20)
        #expect(config.oneTimeBurst == 10 << 20)
        #expect(config.refillTimeNanoseconds == 8_388_608)  // 1 MiB at 125 MB/s
    }

    @Test func encodeDecodeRoundTrip() throws {
        let update = LimitUpdate(tx: DirectionUpdate(bandwidth: .set(Self.mbit100), ops: .remove),
                                 rx: DirectionUpdate(bandwidth: .keep, ops: .set(BucketConfig(size: 5, refillTimeNanoseconds: 7, oneTimeBurst: 3))))
        let bytes = try ControlJSON.encode(update)
        let text = String(decoding: bytes, as: UTF8.self)
        #expect(text.contains("\"ops\" : null"))
        #expect(!text.contains("\"keep\""))
        #expect(try ControlJSON.decode(LimitUpdate.self, from: bytes) == update)
    }

    @Test func applyPatchAndReplace() throws {
        let current = RateLimits(tx: DirectionLimits(bandwidth: Self.mbit100, ops: BucketConfig(size: 8, refillTimeNanoseconds: 8)),
                                 rx: DirectionLimits(ops: BucketConfig(size: 1, refillTimeNanoseconds: 1)))
        let update = LimitUpdate(tx: DirectionUpdate(ops: .remove))
        #expect(update.applied(to: current, replace: false)
                == RateLimits(tx: DirectionLimits(bandwidth: Self.mbit100), rx: current.rx))
        #expect(update.applied(to: current, replace: true) == .unlimited)
    }

    /// Why JSONSyntax exists: the decoder's syntax error carries no position and no
    /// underlying error (swift-foundation in Swift 6.3.1), so ControlJSON finds the spot
    /// itself. Should this fail, the decoder has learnt to say where, and JSONSyntax can go.
    @Test func decoderSyntaxErrorsSayNotWhere() throws {
        for body in ["{\"tx\"\n {}}", #"{"tx": {'ops': 5}}"#, #"{"tx": "#] {
            do {
                _ = try JSONDecoder().decode(LimitUpdate.self, from: Data(body.utf8))
                Issue.record("decoded \(body)")
            } catch DecodingError.dataCorrupted(let context) {
                #expect(context.codingPath.isEmpty && context.underlyingError == nil)
                #expect(!context.debugDescription.contains("line"), "\(context.debugDescription)")
            }
        }
    }

    @Test func flagParsingForTapwirectl() throws {
        let update = try DirectionUpdate.parse(bandwidth: "off", ops: "2.5k", bandwidthFlag: "--tx-bandwidth", opsFlag: "--tx-ops")
        #expect(update.bandwidth == .remove)
        #expect(update.ops == .set(try LimitParser.ops("2500", flag: "x")))
        let error = #expect(throws: LimitParseError.self) {
            _ = try DirectionUpdate.parse(bandwidth: "50Mbps/s", ops: nil, bandwidthFlag: "--rx-bandwidth", opsFlag: "--rx-ops")
        }
        #expect(error?.description.hasPrefix(#"--rx-bandwidth: cannot parse "50Mbps/s""#) == true)
    }
}

@Suite("Models and formatting")
struct ModelTests {
    @Test func statusJSONUsesSnakeCaseAndRoundTrips() throws {
        let status = VMStatus(name: "vm0", state: .waiting, uptimeSeconds: 1.25, tap: "tap0", mac: "52:54:00:00:00:01",
                              mtu: 9000, socketPath: "/run/x.sock",
                              queues: [QueueStatus(index: 0, direction: .rx, size: 0, enabled: false, running: false)],
                              limits: LimitsStatus(tx: DirectionLimits(ops: BucketConfig(size: 8, refillTimeNanoseconds: 8_000_000)),
                                                   rx: .unlimited))
        let text = String(decoding: try ControlJSON.encode(status), as: UTF8.self)
        for key in ["\"uptime_seconds\"", "\"socket_path\"", "\"queue_pairs_enabled\"", "\"tx_human\"", "\"refill_time_ns\"",
                    "\"socket_path\" : \"/run/x.sock\""] {
            #expect(text.contains(key), "\(key)")
        }
        #expect(!text.contains("\"fault\""))
        #expect(status.limits.txHuman == "ops 1000 frames/s, burst 8 frames")
        #expect(status.limits.rxHuman == "unlimited")
        #expect(try ControlJSON.decode(VMStatus.self, from: Array(text.utf8)) == status)
    }

    @Test func numberFormatting() {
        #expect(LimitFormatter.number(1.5, fractionDigits: 3) == "1.5")
        #expect(LimitFormatter.number(100, fractionDigits: 3) == "100")
        #expect(LimitFormatter.number(0.0004, fractionDigits: 3) == "0")
        #expect(LimitFormatter.number(2.0625, fractionDigits: 2) == "2.06")
        #expect(LimitFormatter.number(-0.05, fractionDigits: 1) == "-0.1")
    }

    @Test func prometheusEscapingAndUnlimitedRates() throws {
        var status = VMStatus(name: "a\\b\nc", state: .waiting, uptimeSeconds: 0, tap: "t", mac: "m", mtu: 1500,
                              socketPath: "/s")
        status.limits = .unlimited
        let text = PrometheusRenderer.render(status: status, metrics: MetricsSnapshot(uptimeSeconds: 0))
        #expect(text.contains(#"vm="a\\b\nc""#))
        let samples = try parsePrometheus(text)
        #expect(samples.first { $0.name == "tapwire_info" }?.labels["vm"] == "a\\b\nc")
        #expect(samples.first { $0.name == "tapwire_connected" }?.value == 0)
        #expect(samples.filter { $0.name == "tapwire_rate_limit_ops_per_second" }.map(\.value) == [0, 0])
        #expect(!samples.contains { $0.name == "tapwire_frames_total" })
    }
}
