// Parsing of the rate-limit flags (pure, no Foundation).
//
//   --tx-bandwidth RATE[,burst=SIZE][,one-time-burst=SIZE]      (also --rx-bandwidth)
//   --tx-ops       N[,burst=N][,one-time-burst=N]               (also --rx-ops)
//
// RATE per second: a decimal number and a unit. Bits: bit, kbit, Mbit, Gbit, Tbit (decimal,
//   prefix case-insensitive), Kibit..Tibit (binary), bps, kbps, Mbps, Gbps, Tbps. Bytes: none
//   or B, KB/kB, MB, GB, TB, KiB..TiB (upper-case B). An optional "/s" ("ps" is bits only, so
//   "MBps" is refused), spaces before the unit allowed. "Mb", "kb", "10M", "10K" are refused as
//   ambiguous (bits or bytes?) rather than guessed.
// SIZE: whole bytes, with the byte units (1.5KiB is fine, 1.5B is not; "64K" is ambiguous).
// N: frames, with an optional k, M or G (decimal), "/s" for the rate; bursts are whole frames.
// Options at most once each: burst=, one-time-burst= (or one_time_burst=). A rate or burst of
//   zero is an error; one-time-burst=0 means none.
//
// Mapping a rate R (bytes/s or frames/s, kept as an exact fraction) to a bucket:
//   size: burst= when given. Otherwise the larger of R x 5 ms and a floor:
//     * bandwidth floor 80 KiB. The bucket must hold one maximum-size frame (a 64 KiB
//       GSO/TSO segment plus headers, about 65.6 KB) or every such frame takes the
//       over-consumption path, which waits for a completely full bucket and so throws
//       away whatever refills between "full" and the moment the timer actually fires.
//       The extra 16 KiB absorbs that wake-up latency: 13 ms at 10 Mbit/s. Above the
//       floor, 5 ms of rate covers timer latency at high rates (1.25 MB at 2 Gbit/s)
//       while keeping the burst a guest can emit after idling short. The floor is
//       deliberately not larger: the initial full bucket is a one-off burst that a
//       short throughput measurement sees (80 KiB is 0.65% of 10 s at 10 Mbit/s).
//     * ops floor 8 frames, so a short train of small frames (ACKs) is not serialised.
//     The default size is then rounded up (by at most 25%) to a value for which the
//     refill time below is an exact integer, when one exists.
//   refill time: size / R in nanoseconds, rounded to the nearest nanosecond: exact for the
//     usual rates, else off by at most 0.5 ns / refill time (< 1e-7 for the defaults).

/// Why a limit did not parse. `description` names the flag (or JSON key), the bad
/// value and the accepted forms.
public struct LimitParseError: Error, Sendable, Equatable, CustomStringConvertible {
    /// What was wrong; `text` below says it for a person.
    public enum Reason: Error, Sendable, Equatable {
        case empty, emptyItem, burstTooSmall, rateOutOfRange
        case invalidNumber(String), unknownUnit(String), ambiguousUnit(String), fractional(String), outOfRange(String)
        /// A rate or burst of zero (the named quantity).
        case zero(String)
        case unknownOption(String), duplicateOption(String), missingValue(String)
    }

    /// What the value should have looked like.
    public enum Form: Sendable, Equatable {
        /// A full --*-bandwidth or --*-ops value.
        case bandwidth, ops
        /// A lone field of the JSON convenience form: a bandwidth rate, a size in bytes, a frame count or rate.
        case rate, size, count
    }

    public var flag: String
    public var value: String
    public var reason: Reason
    public var expected: Form

    public init(flag: String, value: String, reason: Reason, expected: Form) {
        self.flag = flag
        self.value = value
        self.reason = reason
        self.expected = expected
    }

    public var description: String {
        "\(flag): cannot parse \"\(value)\" (\(reason.text)): expected \(expected.text)"
    }
}

extension LimitParseError.Reason {
    var text: String {
        switch self {
        case .empty: return "empty value"
        case .emptyItem: return "empty item between commas"
        case .invalidNumber(let s): return "\"\(s)\" is not a number"
        case .unknownUnit(let u): return "unknown unit \"\(u)\""
        case .ambiguousUnit(let u):
            return "ambiguous unit \"\(u)\": write bits as kbit/Mbit/Gbit and bytes as KB/MB/GB (1000) or KiB/MiB/GiB (1024)"
        case .zero(let what): return "\(what) must be greater than zero"
        case .fractional(let s): return "\"\(s)\" is not a whole number"
        case .outOfRange(let s): return "\"\(s)\" is out of range"
        case .unknownOption(let o): return "unknown option \"\(o)\", expected burst= or one-time-burst="
        case .duplicateOption(let o): return "option \"\(o)\" given more than once"
        case .missingValue(let o): return "option \"\(o)\" needs a value, as in \(o)=..."
        case .burstTooSmall: return "burst too small for this rate: it would refill in under a nanosecond"
        case .rateOutOfRange: return "rate out of range for a token bucket"
        }
    }
}

extension LimitParseError.Form {
    var text: String {
        switch self {
        case .bandwidth: return LimitParser.bandwidthSyntax
        case .ops: return LimitParser.opsSyntax
        case .rate: return "RATE like 100Mbit, 2Gbit, 500kbit, 10MB, 1GiB (per second)"
        case .size: return "SIZE in bytes like 64KiB, 1MB, 65536"
        case .count: return "a frame count like 1000, 2.5k, 1M"
        }
    }
}

/// Parses the rate-limit flags into bucket configurations. See the top of this file
/// for the syntax and the rate-to-bucket mapping.
public enum LimitParser {
    /// The flags this module understands.
    public static let txBandwidthFlag = "--tx-bandwidth"
    public static let rxBandwidthFlag = "--rx-bandwidth"
    public static let txOpsFlag = "--tx-ops"
    public static let rxOpsFlag = "--rx-ops"

    public static let bandwidthSyntax =
        "RATE[,burst=SIZE][,one-time-burst=SIZE] where RATE is like 100Mbit, 2Gbit, 500kbit, 10MB, 1GiB (per second) and SIZE like 64KiB, 1MB"
    public static let opsSyntax =
        "N[,burst=N][,one-time-burst=N] where N is a frame count like 1000, 2.5k, 1M (per second)"

    /// Default bucket size = this much time at the configured rate (subject to the floors).
    public static let defaultBurstWindowNanoseconds: UInt64 = 5_000_000
    /// Smallest default bandwidth bucket: one 64 KiB segment plus 16 KiB of slack.
    public static let minimumDefaultBandwidthBurst: UInt64 = 80 * 1024
    /// Smallest default ops bucket.
    public static let minimumDefaultOpsBurst: UInt64 = 8

    // MARK: Flag values

    /// Parses `RATE[,burst=SIZE][,one-time-burst=SIZE]`.
    public static func bandwidth(_ text: String, flag: String) throws(LimitParseError) -> BucketConfig {
        try config(.bandwidth, text, flag: flag)
    }

    /// Parses `N[,burst=N][,one-time-burst=N]` (frames per second).
    public static func ops(_ text: String, flag: String) throws(LimitParseError) -> BucketConfig {
        try config(.ops, text, flag: flag)
    }

    // MARK: Separate fields (the JSON convenience form)

    /// A bandwidth bucket from RATE and optional SIZEs given apart; errors name the field.
    public static func bandwidth(rate: String, burst: String? = nil, oneTimeBurst: String? = nil) throws(LimitParseError) -> BucketConfig {
        try config(.bandwidth, rate: Field("bandwidth_rate", rate, .rate), burst: burst.map { Field("bandwidth_burst", $0, .size) },
                   oneTimeBurst: oneTimeBurst.map { Field("bandwidth_one_time_burst", $0, .size) })
    }

    /// An ops bucket from N (per second) and optional burst counts given apart.
    public static func ops(rate: String, burst: String? = nil, oneTimeBurst: String? = nil) throws(LimitParseError) -> BucketConfig {
        try config(.ops, rate: Field("ops_rate", rate, .count), burst: burst.map { Field("ops_burst", $0, .count) },
                   oneTimeBurst: oneTimeBurst.map { Field("ops_one_time_burst", $0, .count) })
    }

    // MARK: - Internals

    typealias Reason = LimitParseError.Reason

    enum Kind { case bandwidth, ops }

    /// One value and where it came from, for errors: the flag or key, what was given, its form.
    struct Field {
        var name: String, value: String, form: LimitParseError.Form, text: Substring

        init(_ name: String, _ value: String, _ form: LimitParseError.Form, text: Substring? = nil) {
            (self.name, self.value, self.form, self.text) = (name, value, form, text ?? LimitParser.trimmed(value[...]))
        }

        func error(_ reason: Reason) -> LimitParseError {
            LimitParseError(flag: name, value: value, reason: reason, expected: form)
        }

        func parse<T>(_ body: (Substring) throws(Reason) -> T) throws(LimitParseError) -> T {
            do { return try body(text) } catch { throw self.error(error) }
        }
    }

    /// A flag value: every part is blamed on the flag as a whole.
    private static func config(_ kind: Kind, _ text: String, flag: String) throws(LimitParseError) -> BucketConfig {
        let form: LimitParseError.Form = kind == .bandwidth ? .bandwidth : .ops
        let items = try Field(flag, text, form).parse { (_) throws(Reason) in try splitItems(text) }
        func part(_ item: Substring) -> Field { Field(flag, text, form, text: item) }
        return try config(kind, rate: part(items.rate), burst: items.burst.map(part), oneTimeBurst: items.oneTimeBurst.map(part))
    }

    /// The bucket; a zero or too-small burst is the burst's fault, anything else the rate's.
    private static func config(_ kind: Kind, rate: Field, burst: Field?, oneTimeBurst: Field?) throws(LimitParseError) -> BucketConfig {
        let amount = { (s: Substring) throws(Reason) -> UInt64 in kind == .bandwidth ? try parseSize(s) : try wholeCount(s) }
        let r = try rate.parse { (s) throws(Reason) in kind == .bandwidth ? try parseRate(s) : try parseCount(s, allowPerSecond: true) }
        let b = try burst?.parse(amount)
        let o = try oneTimeBurst?.parse(amount)
        do {
            return try makeConfig(rate: r, burst: b, oneTimeBurst: o ?? 0,
                                  minimum: kind == .bandwidth ? minimumDefaultBandwidthBurst : minimumDefaultOpsBurst)
        } catch {
            throw (error == .burstTooSmall || error == .zero("burst") ? burst ?? rate : rate).error(error)
        }
    }

    struct Items {
        var rate: Substring
        var burst: Substring?
        var oneTimeBurst: Substring?
    }

    static func trimmed(_ s: Substring) -> Substring {
        var s = s
        while let f = s.first, f == " " || f == "\t" { s.removeFirst() }
        while let l = s.last, l == " " || l == "\t" { s.removeLast() }
        return s
    }

    static func splitItems(_ text: String) throws(Reason) -> Items {
        let parts = text.split(separator: ",", omittingEmptySubsequences: false).map(trimmed)
        guard let first = parts.first, !(parts.count == 1 && first.isEmpty) else { throw .empty }
        if first.isEmpty { throw .emptyItem }
        var items = Items(rate: first)
        for part in parts.dropFirst() {
            if part.isEmpty { throw .emptyItem }
            guard let eq = part.firstIndex(of: "=") else {
                if isOptionName(part) { throw .missingValue(String(part)) }
                throw .unknownOption(String(part))
            }
            let key = trimmed(part[..<eq])
            let value = trimmed(part[part.index(after: eq)...])
            switch key {
            case "burst":
                if items.burst != nil { throw .duplicateOption("burst") }
                if value.isEmpty { throw .missingValue("burst") }
                items.burst = value
            case "one-time-burst", "one_time_burst":
                if items.oneTimeBurst != nil { throw .duplicateOption("one-time-burst") }
                if value.isEmpty { throw .missingValue(String(key)) }
                items.oneTimeBurst = value
            default:
                throw .unknownOption(String(key))
            }
        }
        return items
    }

    static func isOptionName(_ s: Substring) -> Bool {
        s == "burst" || s == "one-time-burst" || s == "one_time_burst"
    }

    /// An exact non-negative rational number.
    struct Ratio: Equatable {
        var num: UInt128
        var den: UInt128
    }

    /// Splits "1.5 Gbit/s" into the number "1.5" and the unit "Gbit/s".
    static func splitNumber(_ s: Substring) -> (number: Substring, unit: Substring) {
        let end = s.firstIndex { !($0.isASCII && ($0.isNumber || $0 == ".")) } ?? s.endIndex
        return (s[..<end], trimmed(s[end...]))
    }

    static let powersOfTen: [UInt128] = (0...38).map { (n: Int) -> UInt128 in
        var p: UInt128 = 1
        for _ in 0..<n { p *= 10 }
        return p
    }

    /// Parses digits[.digits] exactly. At most 19 significant digits and 9 decimals.
    static func parseDecimal(_ number: Substring, whole: Substring) throws(Reason) -> Ratio {
        let parts = number.split(separator: ".", omittingEmptySubsequences: false)
        guard (1...2).contains(parts.count), !parts[0].isEmpty,
              parts.count == 1 || !parts[1].isEmpty
        else { throw .invalidNumber(String(whole)) }
        let integer = parts[0].drop { $0 == "0" }
        var fraction = parts.count == 2 ? parts[1] : ""
        while fraction.last == "0" { fraction.removeLast() }
        guard integer.count + fraction.count <= 19, fraction.count <= 9 else {
            throw .outOfRange(String(whole))
        }
        var mantissa: UInt128 = 0
        for ch in integer + fraction {
            guard let d = ch.wholeNumberValue else { throw .invalidNumber(String(whole)) }
            mantissa = mantissa * 10 + UInt128(d)
        }
        return Ratio(num: mantissa, den: powersOfTen[fraction.count])
    }

    static func prefixMultiplier(_ p: Substring) -> UInt128? {
        guard let first = p.first else { return 1 }
        let power: Int
        switch first {
        case "k", "K": power = 1
        case "m", "M": power = 2
        case "g", "G": power = 3
        case "t", "T": power = 4
        default: return nil
        }
        switch p.count {
        case 1: return powersOfTen[3 * power]
        case 2 where p.last == "i": return UInt128(1) << (10 * power)
        default: return nil
        }
    }

    /// RATE -> bytes per second.
    static func parseRate(_ text: Substring) throws(Reason) -> Ratio {
        let (number, unitText) = splitNumber(text)
        if number.isEmpty {
            if text.isEmpty { throw .empty }
            throw .invalidNumber(String(text))
        }
        let value = try parseDecimal(number, whole: text)
        var unit = unitText
        var explicitPerSecond = false
        if unit.hasSuffix("/s") {
            unit = unit.dropLast(2)
            explicitPerSecond = true
        }
        let multiplier: Ratio
        if unit.isEmpty || unit == "B" {
            multiplier = Ratio(num: 1, den: 1)
        } else if unit.lowercased().hasSuffix("bit") {
            guard let m = prefixMultiplier(unit.dropLast(3)) else { throw .unknownUnit(String(unitText)) }
            multiplier = Ratio(num: m, den: 8)
        } else if unit.hasSuffix("bps") {
            guard !explicitPerSecond, let m = prefixMultiplier(unit.dropLast(3)) else {
                throw .unknownUnit(String(unitText))
            }
            multiplier = Ratio(num: m, den: 8)
        } else if unit.hasSuffix("B") {
            guard let m = prefixMultiplier(unit.dropLast()) else { throw .unknownUnit(String(unitText)) }
            multiplier = Ratio(num: m, den: 1)
        } else if unit.hasSuffix("b") || prefixMultiplier(unit) != nil {
            // "Mb", "kb", "10M", "10Ki": bits or bytes?
            guard prefixMultiplier(unit.hasSuffix("b") ? unit.dropLast() : unit) != nil else {
                throw .unknownUnit(String(unitText))
            }
            throw .ambiguousUnit(String(unitText))
        } else {
            throw .unknownUnit(String(unitText))
        }
        let product = try multiply(value, multiplier, whole: text)
        if product.num == 0 { throw .zero("rate") }
        return product
    }

    /// SIZE -> bytes (whole).
    static func parseSize(_ text: Substring) throws(Reason) -> UInt64 {
        let (number, unit) = splitNumber(text)
        if number.isEmpty {
            if text.isEmpty { throw .empty }
            throw .invalidNumber(String(text))
        }
        let value = try parseDecimal(number, whole: text)
        let multiplier: UInt128
        if unit.isEmpty || unit == "B" {
            multiplier = 1
        } else if unit.hasSuffix("B"), let m = prefixMultiplier(unit.dropLast()) {
            multiplier = m
        } else if prefixMultiplier(unit) != nil
                    || (unit.hasSuffix("b") && !unit.lowercased().hasSuffix("bit") && prefixMultiplier(unit.dropLast()) != nil) {
            throw .ambiguousUnit(String(unit))
        } else {
            throw .unknownUnit(String(unit))
        }
        return try whole(multiply(value, Ratio(num: multiplier, den: 1), whole: text), text: text)
    }

    /// N -> frames (per second when used as a rate), possibly fractional.
    static func parseCount(_ text: Substring, allowPerSecond: Bool) throws(Reason) -> Ratio {
        let (number, unitText) = splitNumber(text)
        if number.isEmpty {
            if text.isEmpty { throw .empty }
            throw .invalidNumber(String(text))
        }
        let value = try parseDecimal(number, whole: text)
        var unit = unitText
        if allowPerSecond, unit.hasSuffix("/s") { unit = unit.dropLast(2) }
        let multiplier: UInt128
        switch unit {
        case "": multiplier = 1
        case "k", "K": multiplier = powersOfTen[3]
        case "m", "M": multiplier = powersOfTen[6]
        case "g", "G": multiplier = powersOfTen[9]
        default: throw .unknownUnit(String(unitText))
        }
        let product = try multiply(value, Ratio(num: multiplier, den: 1), whole: text)
        if allowPerSecond, product.num == 0 { throw .zero("rate") }
        return product
    }

    static func wholeCount(_ text: Substring) throws(Reason) -> UInt64 {
        try whole(parseCount(text, allowPerSecond: false), text: text)
    }

    static func multiply(_ a: Ratio, _ b: Ratio, whole: Substring) throws(Reason) -> Ratio {
        let (n, o1) = a.num.multipliedReportingOverflow(by: b.num)
        let (d, o2) = a.den.multipliedReportingOverflow(by: b.den)
        if o1 || o2 { throw .outOfRange(String(whole)) }
        return Ratio(num: n, den: d)
    }

    static func whole(_ r: Ratio, text: Substring) throws(Reason) -> UInt64 {
        let (q, rem) = r.num.quotientAndRemainder(dividingBy: r.den)
        if rem != 0 { throw .fractional(String(text)) }
        guard q <= UInt128(UInt64.max) else { throw .outOfRange(String(text)) }
        return UInt64(q)
    }

    static func gcd(_ a: UInt128, _ b: UInt128) -> UInt128 {
        var (a, b) = (a, b)
        while b != 0 { (a, b) = (b, a % b) }
        return a
    }

    /// The bucket for `rate` units per second.
    static func makeConfig(rate: Ratio, burst: UInt64?, oneTimeBurst: UInt64, minimum: UInt64) throws(Reason) -> BucketConfig {
        if burst == 0 { throw .zero("burst") }
        let g = gcd(rate.num, rate.den)
        let num = rate.num / g, den = rate.den / g
        let nanos: UInt128 = 1_000_000_000
        let size: UInt128
        if let burst {
            size = UInt128(burst)
        } else {
            // ceil(rate * window), at least `minimum`.
            let window = UInt128(defaultBurstWindowNanoseconds)
            let (q, r) = (num * window).quotientAndRemainder(dividingBy: den * nanos)
            var s = max(r == 0 ? q : q + 1, UInt128(minimum))
            // refill = s * 1e9 * den / num is an integer iff (num / gcd(num, 1e9)) divides s.
            let step = num / gcd(num, nanos)
            if step > 1 {
                let rounded = (s + step - 1) / step * step
                if rounded <= s + s / 4 { s = rounded }
            }
            guard s <= UInt128(UInt64.max) else { throw .rateOutOfRange }
            size = s
        }
        // refill = round(size * 1e9 * den / num). size < 2^64, 1e9 * den < 2^63: fits.
        let (q, r) = (size * nanos * den).quotientAndRemainder(dividingBy: num)
        let refill = r * 2 >= num ? q + 1 : q
        if refill == 0 { throw .burstTooSmall }
        guard refill <= UInt128(UInt64.max) else { throw .rateOutOfRange }
        return BucketConfig(size: UInt64(size), refillTimeNanoseconds: UInt64(refill), oneTimeBurst: oneTimeBurst)
    }
}
