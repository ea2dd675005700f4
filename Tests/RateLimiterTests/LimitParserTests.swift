import Testing
import RateLimiter

@Suite("LimitParser")
struct LimitParserTests {
    /// A RATE and its exact value in bytes per second, as num/den.
    struct RateCase: Sendable, CustomStringConvertible {
        var text: String
        var num: UInt128
        var den: UInt128 = 1
        var description: String { text }
    }

    static let rates: [RateCase] = [
        // plain bytes per second, with and without B and /s
        RateCase(text: "125000", num: 125_000),
        RateCase(text: "125000B", num: 125_000),
        RateCase(text: "125000B/s", num: 125_000),
        RateCase(text: "125000/s", num: 125_000),
        // decimal bits
        RateCase(text: "1000bit", num: 125),
        RateCase(text: "8bit/s", num: 1),
        RateCase(text: "500kbit", num: 62_500),
        RateCase(text: "500Kbit", num: 62_500),
        RateCase(text: "100Mbit", num: 12_500_000),
        RateCase(text: "100mbit", num: 12_500_000),
        RateCase(text: "100MBIT", num: 12_500_000),
        RateCase(text: "100Mbit/s", num: 12_500_000),
        RateCase(text: "100 Mbit/s", num: 12_500_000),
        RateCase(text: "100Mbps", num: 12_500_000),
        RateCase(text: "100mbps", num: 12_500_000),
        RateCase(text: "2Gbit", num: 250_000_000),
        RateCase(text: "2gbit", num: 250_000_000),
        RateCase(text: "2Gbps", num: 250_000_000),
        RateCase(text: "1Tbit", num: 125_000_000_000),
        RateCase(text: "1Tbps", num: 125_000_000_000),
        RateCase(text: "800bps", num: 100),
        RateCase(text: "1kbps", num: 125),
        // decimals
        RateCase(text: "1.5Gbit", num: 187_500_000),
        RateCase(text: "0.5Mbit", num: 62_500),
        RateCase(text: "2.50Mbit", num: 312_500),
        RateCase(text: "0.001Gbit", num: 125_000),
        // binary bits
        RateCase(text: "1Kibit", num: 128),
        RateCase(text: "1Mibit", num: 131_072),
        RateCase(text: "1Gibit", num: 1 << 27),
        RateCase(text: "1Tibit", num: 1 << 37),
        // decimal bytes
        RateCase(text: "10KB", num: 10_000),
        RateCase(text: "10kB", num: 10_000),
        RateCase(text: "10MB", num: 10_000_000),
        RateCase(text: "10MB/s", num: 10_000_000),
        RateCase(text: "1GB", num: 1_000_000_000),
        RateCase(text: "1TB", num: 1_000_000_000_000),
        // binary bytes
        RateCase(text: "1KiB", num: 1024),
        RateCase(text: "1MiB", num: 1 << 20),
        RateCase(text: "2.5MiB", num: 2_621_440),
        RateCase(text: "1GiB", num: 1 << 30),
        RateCase(text: "1GiB/s", num: 1 << 30),
        RateCase(text: "1TiB", num: 1 << 40),
    ]

    @Test(arguments: rates)
    func everyRateUnitMapsExactly(_ c: RateCase) throws {
        let config = try LimitParser.bandwidth(c.text, flag: "--tx-bandwidth")
        // size / refill (per ns) == num / den (per s), exactly.
        #expect(UInt128(config.size) * 1_000_000_000 * c.den == c.num * UInt128(config.refillTimeNanoseconds),
                "\(c.text): size \(config.size) refill \(config.refillTimeNanoseconds)")
        #expect(config.size >= LimitParser.minimumDefaultBandwidthBurst)
        #expect(config.oneTimeBurst == 0)
    }

    @Test func defaultBucketSizes() throws {
        #expect(try LimitParser.bandwidth("10Mbit", flag: "f") == BucketConfig(size: 81_920, refillTimeNanoseconds: 65_536_000))
        #expect(try LimitParser.bandwidth("200Mbit", flag: "f") == BucketConfig(size: 125_000, refillTimeNanoseconds: 5_000_000))
        #expect(try LimitParser.bandwidth("2Gbit", flag: "f") == BucketConfig(size: 1_250_000, refillTimeNanoseconds: 5_000_000))
        // 1 GiB/s: 5 ms is 5_368_709.12 bytes, rounded up to 3 MiB x 2 so the refill time is exact.
        #expect(try LimitParser.bandwidth("1GiB", flag: "f") == BucketConfig(size: 6_291_456, refillTimeNanoseconds: 5_859_375))
    }

    @Test func ratesWithoutAnExactBucketAreRoundedToTheNanosecond() throws {
        // 1_234_567 B/s has no exact 80 KiB-ish bucket: the refill time is rounded.
        let config = try LimitParser.bandwidth("1234567", flag: "f")
        #expect(config.size == 81_920)
        #expect(config.refillTimeNanoseconds == 66_355_248)  // 66_355_248.4...
        let rate = Double(config.size) * 1e9 / Double(config.refillTimeNanoseconds)
        #expect(abs(rate - 1_234_567) / 1_234_567 < 1e-8)
    }

    @Test func burstAndOneTimeBurstSizes() throws {
        func parse(_ s: String) throws -> BucketConfig { try LimitParser.bandwidth(s, flag: "--rx-bandwidth") }
        #expect(try parse("100Mbit,burst=64KiB") == BucketConfig(size: 65_536, refillTimeNanoseconds: 5_242_880))
        #expect(try parse("100Mbit,burst=1MB").size == 1_000_000)
        #expect(try parse("100Mbit,burst=1.5KiB").size == 1_536)
        #expect(try parse("100Mbit,burst=65536").size == 65_536)
        #expect(try parse("100Mbit,burst=1000B").size == 1_000)
        #expect(try parse("100Mbit,burst=64KB").size == 64_000)
        #expect(try parse("100Mbit,burst=64kB").size == 64_000)
        #expect(try parse("100Mbit,burst=2GiB").size == 1 << 31)
        #expect(try parse("100Mbit,burst=1TB").size == 1_000_000_000_000)
        #expect(try parse("100Mbit,burst=1TiB").size == 1 << 40)
        #expect(try parse("100Mbit,burst=3MiB").size == 3 << 20)
        #expect(try parse("100Mbit,burst=2GB").size == 2_000_000_000)
        #expect(try parse("100Mbit,one-time-burst=1MiB") == BucketConfig(size: 81_920, refillTimeNanoseconds: 6_553_600, oneTimeBurst: 1 << 20))
        #expect(try parse("100Mbit,one_time_burst=10MB").oneTimeBurst == 10_000_000)
        #expect(try parse("100Mbit,one-time-burst=0").oneTimeBurst == 0)
        #expect(try parse(" 100Mbit , burst = 64KiB ,one-time-burst=1KB ")
                == BucketConfig(size: 65_536, refillTimeNanoseconds: 5_242_880, oneTimeBurst: 1_000))
        #expect(try parse("100Mbit,one-time-burst=1KB,burst=64KiB") == parse("100Mbit,burst=64KiB,one-time-burst=1KB"))
    }

    @Test func opsForms() throws {
        func parse(_ s: String) throws -> BucketConfig { try LimitParser.ops(s, flag: "--tx-ops") }
        #expect(try parse("1000") == BucketConfig(size: 8, refillTimeNanoseconds: 8_000_000))
        #expect(try parse("1000/s") == parse("1000"))
        #expect(try parse("2.5k") == BucketConfig(size: 13, refillTimeNanoseconds: 5_200_000))
        #expect(try parse("2.5K") == parse("2.5k"))
        #expect(try parse("1M") == BucketConfig(size: 5_000, refillTimeNanoseconds: 5_000_000))
        #expect(try parse("1m") == parse("1M"))
        #expect(try parse("1G") == BucketConfig(size: 5_000_000, refillTimeNanoseconds: 5_000_000))
        #expect(try parse("0.5") == BucketConfig(size: 8, refillTimeNanoseconds: 16_000_000_000))
        #expect(try parse("1000,burst=50") == BucketConfig(size: 50, refillTimeNanoseconds: 50_000_000))
        #expect(try parse("1000,burst=2k,one-time-burst=10k")
                == BucketConfig(size: 2_000, refillTimeNanoseconds: 2_000_000_000, oneTimeBurst: 10_000))
        #expect(try parse("1k,one_time_burst=5").oneTimeBurst == 5)
    }

    struct ErrorCase: Sendable, CustomStringConvertible {
        var text: String
        var reason: LimitParseError.Reason
        var description: String { text }
    }

    static let bandwidthErrors: [ErrorCase] = [
        ErrorCase(text: "", reason: .empty),
        ErrorCase(text: "   ", reason: .empty),
        ErrorCase(text: ",burst=1KiB", reason: .emptyItem),
        ErrorCase(text: "100Mbit,", reason: .emptyItem),
        ErrorCase(text: "100Mbit,,burst=1KiB", reason: .emptyItem),
        ErrorCase(text: "10Mbitz", reason: .unknownUnit("Mbitz")),
        ErrorCase(text: "1Xbit", reason: .unknownUnit("Xbit")),
        ErrorCase(text: "100MBps", reason: .unknownUnit("MBps")),
        ErrorCase(text: "100Mbps/s", reason: .unknownUnit("Mbps/s")),
        ErrorCase(text: "100Mbit/h", reason: .unknownUnit("Mbit/h")),
        ErrorCase(text: "10Mb", reason: .ambiguousUnit("Mb")),
        ErrorCase(text: "10kb", reason: .ambiguousUnit("kb")),
        ErrorCase(text: "10M", reason: .ambiguousUnit("M")),
        ErrorCase(text: "10Ki", reason: .ambiguousUnit("Ki")),
        ErrorCase(text: "10b", reason: .ambiguousUnit("b")),
        ErrorCase(text: "abc", reason: .invalidNumber("abc")),
        ErrorCase(text: "-5Mbit", reason: .invalidNumber("-5Mbit")),
        ErrorCase(text: "1.2.3Mbit", reason: .invalidNumber("1.2.3Mbit")),
        ErrorCase(text: ".5Mbit", reason: .invalidNumber(".5Mbit")),
        ErrorCase(text: "1.Mbit", reason: .invalidNumber("1.Mbit")),
        ErrorCase(text: "0Mbit", reason: .zero("rate")),
        ErrorCase(text: "0.0", reason: .zero("rate")),
        ErrorCase(text: "99999999999999999999Mbit", reason: .outOfRange("99999999999999999999Mbit")),
        ErrorCase(text: "1.0000000001Mbit", reason: .outOfRange("1.0000000001Mbit")),
        ErrorCase(text: "0.000000001bit", reason: .rateOutOfRange),
        ErrorCase(text: "100Gbit,burst=1", reason: .burstTooSmall),
        ErrorCase(text: "100Mbit,burst=0", reason: .zero("burst")),
        ErrorCase(text: "100Mbit,burst=1.5B", reason: .fractional("1.5B")),
        ErrorCase(text: "100Mbit,burst=64K", reason: .ambiguousUnit("K")),
        ErrorCase(text: "100Mbit,burst=64b", reason: .ambiguousUnit("b")),
        ErrorCase(text: "100Mbit,burst=64Kbit", reason: .unknownUnit("Kbit")),
        ErrorCase(text: "100Mbit,burst=64KiB/s", reason: .unknownUnit("KiB/s")),
        ErrorCase(text: "100Mbit,burst=20000000000TiB", reason: .outOfRange("20000000000TiB")),
        ErrorCase(text: "100Mbit,burst=lots", reason: .invalidNumber("lots")),
        ErrorCase(text: "100Mbit,burst", reason: .missingValue("burst")),
        ErrorCase(text: "100Mbit,burst=", reason: .missingValue("burst")),
        ErrorCase(text: "100Mbit,one-time-burst", reason: .missingValue("one-time-burst")),
        ErrorCase(text: "100Mbit,foo=1", reason: .unknownOption("foo")),
        ErrorCase(text: "100Mbit,64KiB", reason: .unknownOption("64KiB")),
        ErrorCase(text: "100Mbit,burst=1KiB,burst=2KiB", reason: .duplicateOption("burst")),
        ErrorCase(text: "100Mbit,one-time-burst=1KiB,one_time_burst=2KiB", reason: .duplicateOption("one-time-burst")),
    ]

    @Test(arguments: bandwidthErrors)
    func bandwidthErrorsNameTheFlagTheValueAndTheForms(_ c: ErrorCase) {
        do {
            let config = try LimitParser.bandwidth(c.text, flag: "--tx-bandwidth")
            Issue.record("\(c.text) parsed as \(config)")
        } catch let e {
            #expect(e.reason == c.reason)
            #expect(e.flag == "--tx-bandwidth" && e.value == c.text && e.expected == .bandwidth)
            #expect(e.description.hasPrefix("--tx-bandwidth: cannot parse \"\(c.text)\" ("))
            #expect(e.description.hasSuffix("expected " + LimitParser.bandwidthSyntax))
        }
    }

    static let opsErrors: [ErrorCase] = [
        ErrorCase(text: "", reason: .empty),
        ErrorCase(text: "1000x", reason: .unknownUnit("x")),
        ErrorCase(text: "10KiB", reason: .unknownUnit("KiB")),
        ErrorCase(text: "10Mbit", reason: .unknownUnit("Mbit")),
        ErrorCase(text: "0", reason: .zero("rate")),
        ErrorCase(text: "many", reason: .invalidNumber("many")),
        ErrorCase(text: "1000,burst=0", reason: .zero("burst")),
        ErrorCase(text: "1000,burst=1.5", reason: .fractional("1.5")),
        ErrorCase(text: "1000,burst=5/s", reason: .unknownUnit("/s")),
        ErrorCase(text: "1000,one-time-burst=abc", reason: .invalidNumber("abc")),
        ErrorCase(text: "1000,burst=99999999999G", reason: .outOfRange("99999999999G")),
        ErrorCase(text: "1000,rate=5", reason: .unknownOption("rate")),
        ErrorCase(text: "1000,burst=1,burst=2", reason: .duplicateOption("burst")),
        ErrorCase(text: "1000,burst", reason: .missingValue("burst")),
        ErrorCase(text: "1000,", reason: .emptyItem),
    ]

    @Test(arguments: opsErrors)
    func opsErrorsNameTheFlagTheValueAndTheForms(_ c: ErrorCase) {
        do {
            let config = try LimitParser.ops(c.text, flag: "--rx-ops")
            Issue.record("\(c.text) parsed as \(config)")
        } catch let e {
            #expect(e.reason == c.reason)
            #expect(e.flag == "--rx-ops" && e.value == c.text && e.expected == .ops)
            #expect(e.description.hasPrefix("--rx-ops: cannot parse \"\(c.text)\" ("))
            #expect(e.description.hasSuffix("expected " + LimitParser.opsSyntax))
        }
    }

    @Test func errorTextReadsWell() {
        do {
            _ = try LimitParser.bandwidth("10Mbitz", flag: "--tx-bandwidth")
            Issue.record("parsed")
        } catch {
            // Typed throws: `error` is a LimitParseError.
            #expect(error.description == """
                --tx-bandwidth: cannot parse "10Mbitz" (unknown unit "Mbitz"): expected RATE[,burst=SIZE][,one-time-burst=SIZE] \
                where RATE is like 100Mbit, 2Gbit, 500kbit, 10MB, 1GiB (per second) and SIZE like 64KiB, 1MB
                """)
        }
        do {
            _ = try LimitParser.bandwidth("10Mb", flag: "--rx-bandwidth")
            Issue.record("parsed")
        } catch {
            #expect(error.description.contains("ambiguous unit \"Mb\""))
            #expect(error.description.contains("Mbit"))
            #expect(error.description.contains("MiB"))
        }
    }

    @Test func separateFieldsBlameTheRightField() throws {
        #expect(try LimitParser.bandwidth(rate: "100Mbit", burst: "64KiB", oneTimeBurst: "1MiB")
                == LimitParser.bandwidth("100Mbit,burst=64KiB,one-time-burst=1MiB", flag: "f"))
        #expect(try LimitParser.ops(rate: "1000", burst: "16") == LimitParser.ops("1000,burst=16", flag: "f"))
        func failure(_ body: () throws(LimitParseError) -> BucketConfig) -> LimitParseError? {
            do { _ = try body(); return nil } catch { return error }
        }
        let e1 = failure { () throws(LimitParseError) in try LimitParser.bandwidth(rate: "100Mbit", burst: "64K") }
        #expect(e1?.flag == "bandwidth_burst" && e1?.value == "64K" && e1?.expected == .size)
        let e2 = failure { () throws(LimitParseError) in try LimitParser.bandwidth(rate: "fast") }
        #expect(e2?.flag == "bandwidth_rate" && e2?.expected == .rate)
        #expect(e2?.description.contains("RATE like 100Mbit") == true)
        let e3 = failure { () throws(LimitParseError) in try LimitParser.bandwidth(rate: "100Gbit", burst: "1") }
        #expect(e3?.flag == "bandwidth_burst" && e3?.reason == .burstTooSmall)
        let e4 = failure { () throws(LimitParseError) in try LimitParser.ops(rate: "10", oneTimeBurst: "0.5") }
        #expect(e4?.flag == "ops_one_time_burst" && e4?.reason == .fractional("0.5"))
        let e5 = failure { () throws(LimitParseError) in try LimitParser.bandwidth(rate: "1Mbit", burst: "0") }
        #expect(e5?.flag == "bandwidth_burst" && e5?.reason == .zero("burst"))
    }
}

@Suite("LimitFormatter")
struct LimitFormatterTests {
    @Test func bandwidthStrings() throws {
        func show(_ s: String) throws -> String { LimitFormatter.bandwidth(try LimitParser.bandwidth(s, flag: "f")) }
        #expect(try show("100Mbit,burst=64KiB") == "100 Mbit/s, burst 64 KiB")
        #expect(try show("10Mbit") == "10 Mbit/s, burst 80 KiB")
        #expect(try show("200Mbit") == "200 Mbit/s, burst 125 KB")
        #expect(try show("2Gbit") == "2 Gbit/s, burst 1.25 MB")
        #expect(try show("1.5Gbit,burst=1MiB,one-time-burst=10MB") == "1.5 Gbit/s, burst 1 MiB, one-time burst 10 MB")
        #expect(try show("500kbit") == "500 kbit/s, burst 80 KiB")
        #expect(try show("1234567") == "9.877 Mbit/s, burst 80 KiB")
        #expect(try show("1TiB") == "8.796 Tbit/s, burst 6 GiB")
        #expect(try show("8bit,burst=1") == "8 bit/s, burst 1 B")
        #expect(LimitFormatter.bandwidth(BucketConfig(size: 0, refillTimeNanoseconds: 0)) == "unlimited")
        // 999.9999 Mbit/s rounds to 1 Gbit/s, not "1000 Mbit/s".
        #expect(LimitFormatter.bandwidth(BucketConfig(size: 1_000_000, refillTimeNanoseconds: 8_000_001)) == "1 Gbit/s, burst 1 MB")
    }

    @Test func opsStrings() throws {
        #expect(LimitFormatter.ops(try LimitParser.ops("1000", flag: "f")) == "1000 frames/s, burst 8 frames")
        #expect(LimitFormatter.ops(try LimitParser.ops("0.5", flag: "f")) == "0.5 frames/s, burst 8 frames")
        #expect(LimitFormatter.ops(try LimitParser.ops("2k,burst=100,one-time-burst=500", flag: "f"))
                == "2000 frames/s, burst 100 frames, one-time burst 500 frames")
    }

    @Test func byteStrings() {
        #expect(LimitFormatter.bytes(0) == "0 B")
        #expect(LimitFormatter.bytes(999) == "999 B")
        #expect(LimitFormatter.bytes(1024) == "1 KiB")
        #expect(LimitFormatter.bytes(1500) == "1.5 KB")
        #expect(LimitFormatter.bytes(65_536) == "64 KiB")
        #expect(LimitFormatter.bytes(1_234_567) == "1.18 MiB")
        #expect(LimitFormatter.bytes(3 << 30) == "3 GiB")
        #expect(LimitFormatter.bytes(2_000_000_000_000) == "2 TB")
    }

    @Test func directionStrings() throws {
        let limits = DirectionLimits(bandwidth: try LimitParser.bandwidth("100Mbit,burst=64KiB", flag: "f"),
                                     ops: try LimitParser.ops("1000", flag: "f"))
        #expect(LimitFormatter.direction(limits) == "bandwidth 100 Mbit/s, burst 64 KiB; ops 1000 frames/s, burst 8 frames")
        #expect(limits.description == LimitFormatter.direction(limits))
        #expect(LimitFormatter.direction(.unlimited) == "unlimited")
        #expect(LimitFormatter.limits(RateLimits(tx: limits)) == "tx: \(LimitFormatter.direction(limits)) | rx: unlimited")
    }
}
