import Testing
import Foundation   // JSONEncoder/JSONDecoder only; the RateLimiter module itself uses stdlib Codable.
import RateLimiter

@Suite("JSON")
struct CodableTests {
    func encode<T: Encodable>(_ value: T) throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return String(decoding: try encoder.encode(value), as: UTF8.self)
    }

    func decode<T: Decodable>(_ type: T.Type, _ json: String) throws -> T {
        try JSONDecoder().decode(type, from: Data(json.utf8))
    }

    /// The debugDescription of the DecodingError thrown for `json`, or nil if it decoded.
    func decodingFailure<T: Decodable>(_ type: T.Type, _ json: String) -> String? {
        do {
            _ = try decode(type, json)
            return nil
        } catch DecodingError.dataCorrupted(let context) {
            return context.debugDescription
        } catch {
            return "other error: \(error)"
        }
    }

    static let sample = DirectionLimits(
        bandwidth: BucketConfig(size: 81_920, refillTimeNanoseconds: 65_536_000, oneTimeBurst: 1_048_576),
        ops: BucketConfig(size: 8, refillTimeNanoseconds: 8_000_000))

    @Test func canonicalFormUsesTheDocumentedKeys() throws {
        #expect(try encode(Self.sample) == """
            {"bandwidth":{"one_time_burst":1048576,"refill_time_ns":65536000,"size":81920},\
            "ops":{"one_time_burst":0,"refill_time_ns":8000000,"size":8}}
            """)
        #expect(try encode(DirectionLimits(ops: Self.sample.ops)) == """
            {"ops":{"one_time_burst":0,"refill_time_ns":8000000,"size":8}}
            """)
        #expect(try encode(DirectionLimits.unlimited) == "{}")
    }

    @Test func roundTrips() throws {
        for limits in [Self.sample, .unlimited, DirectionLimits(bandwidth: Self.sample.bandwidth)] {
            #expect(try decode(DirectionLimits.self, encode(limits)) == limits)
        }
        let both = RateLimits(tx: Self.sample, rx: DirectionLimits(ops: Self.sample.ops))
        #expect(try decode(RateLimits.self, encode(both)) == both)
        #expect(try decode(RateLimits.self, "{}") == .unlimited)
    }

    @Test func canonicalDecodingDetails() throws {
        // one_time_burst may be omitted; null means no limit.
        #expect(try decode(DirectionLimits.self, #"{"bandwidth":{"size":1000,"refill_time_ns":5},"ops":null}"#)
                == DirectionLimits(bandwidth: BucketConfig(size: 1000, refillTimeNanoseconds: 5)))
        // A missing required field is an error.
        #expect(throws: DecodingError.self) {
            try decode(DirectionLimits.self, #"{"bandwidth":{"size":1000}}"#)
        }
        // Firecracker's "refill_time" (milliseconds) is rejected, not silently ignored.
        let message = decodingFailure(DirectionLimits.self, #"{"bandwidth":{"size":1000,"refill_time":100,"refill_time_ns":5}}"#)
        #expect(message?.contains("unknown key \"refill_time\"") == true)
    }

    @Test func convenienceFormMatchesTheFlagParser() throws {
        let decoded = try decode(DirectionLimits.self,
                                 #"{"bandwidth_rate":"100Mbit","bandwidth_burst":"64KiB","ops_rate":"1000"}"#)
        #expect(decoded == DirectionLimits(bandwidth: try LimitParser.bandwidth("100Mbit,burst=64KiB", flag: "f"),
                                           ops: try LimitParser.ops("1000", flag: "f")))
        let full = try decode(DirectionLimits.self, """
            {"bandwidth_rate":"2Gbit","bandwidth_one_time_burst":"1MiB",
             "ops_rate":"10k","ops_burst":"100","ops_one_time_burst":500}
            """)
        #expect(full.bandwidth == (try LimitParser.bandwidth("2Gbit,one-time-burst=1MiB", flag: "f")))
        #expect(full.ops == (try LimitParser.ops("10k,burst=100,one-time-burst=500", flag: "f")))
        // Plain JSON numbers: bytes per second and frames per second.
        #expect(try decode(DirectionLimits.self, #"{"bandwidth_rate":125000,"ops_rate":1000}"#)
                == DirectionLimits(bandwidth: try LimitParser.bandwidth("125000", flag: "f"),
                                   ops: try LimitParser.ops("1000", flag: "f")))
        // It encodes back in the canonical form, and that decodes to the same thing.
        #expect(try decode(DirectionLimits.self, encode(decoded)) == decoded)
        #expect(try !encode(decoded).contains("rate"))
    }

    @Test func convenienceFormErrorsNameTheKey() {
        let bad = decodingFailure(DirectionLimits.self, #"{"bandwidth_rate":"10Mbitz"}"#)
        #expect(bad?.hasPrefix("bandwidth_rate: cannot parse \"10Mbitz\" (unknown unit \"Mbitz\"): expected RATE") == true,
                "\(bad ?? "decoded")")
        let badBurst = decodingFailure(DirectionLimits.self, #"{"bandwidth_rate":"1Gbit","bandwidth_burst":"64K"}"#)
        #expect(badBurst?.hasPrefix("bandwidth_burst: cannot parse \"64K\" (ambiguous unit") == true)
        let badOps = decodingFailure(DirectionLimits.self, #"{"ops_rate":"1000","ops_burst":"1.5"}"#)
        #expect(badOps?.hasPrefix("ops_burst: cannot parse \"1.5\"") == true)
        let mixed = decodingFailure(DirectionLimits.self,
                                    #"{"bandwidth":{"size":1,"refill_time_ns":1},"bandwidth_rate":"1Gbit"}"#)
        #expect(mixed?.contains("cannot be combined") == true)
        let orphan = decodingFailure(DirectionLimits.self, #"{"ops_burst":"10"}"#)
        #expect(orphan?.contains("needs \"ops_rate\"") == true)
        let typo = decodingFailure(DirectionLimits.self, #"{"bandwith_rate":"1Gbit"}"#)
        #expect(typo?.contains("unknown key \"bandwith_rate\"") == true)
        let typoOuter = decodingFailure(RateLimits.self, #"{"tx":{},"txx":{}}"#)
        #expect(typoOuter?.contains("unknown key \"txx\"") == true)
    }

    @Test func patchKeepsRemovesAndReplaces() throws {
        let current = Self.sample
        #expect(try decode(DirectionUpdate.self, "{}").applied(to: current) == current)
        #expect(try decode(DirectionUpdate.self, #"{"ops":null}"#).applied(to: current)
                == DirectionLimits(bandwidth: current.bandwidth))
        #expect(try decode(DirectionUpdate.self, #"{"bandwidth_rate":null}"#).applied(to: current)
                == DirectionLimits(ops: current.ops))
        let faster = try decode(DirectionUpdate.self, #"{"bandwidth_rate":"1Gbit"}"#)
        #expect(faster.bandwidth == .set(try LimitParser.bandwidth("1Gbit", flag: "f")))
        #expect(faster.ops == .keep)
        #expect(faster.applied(to: current).ops == current.ops)
        let canonical = try decode(DirectionUpdate.self, #"{"ops":{"size":4,"refill_time_ns":1000}}"#)
        #expect(canonical.applied(to: .unlimited) == DirectionLimits(ops: BucketConfig(size: 4, refillTimeNanoseconds: 1000)))

        let both = try decode(LimitUpdate.self, #"{"rx":{"ops":null}}"#)
        let state = RateLimits(tx: current, rx: current)
        #expect(both.applied(to: state, replace: false) == RateLimits(tx: current, rx: DirectionLimits(bandwidth: current.bandwidth)))
        #expect(try decode(LimitUpdate.self, "{}").applied(to: state, replace: false) == state)
    }
}
