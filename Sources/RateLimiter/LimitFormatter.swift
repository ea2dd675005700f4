// Human-readable limits and numbers for logs, status output and tapwirectl, e.g.
//   "10 Mbit/s, burst 80 KiB"
//   "1.5 Gbit/s, burst 1.17 MB, one-time burst 1 MiB"
//   "1000 frames/s, burst 8 frames"
// Rates are shown in decimal bit units (rounded to 3 decimals). Sizes are shown
// exactly in binary units when they are a whole number of them, else exactly in
// decimal units when that takes at most 3 decimals, else in binary units rounded to
// 2 decimals.

public enum LimitFormatter {
    /// "100 Mbit/s, burst 64 KiB[, one-time burst 1 MiB]", or "unlimited".
    public static func bandwidth(_ config: BucketConfig) -> String {
        guard config.isEnabled else { return "unlimited" }
        // bits/s = size * 8e9 / refill.
        let rate = scaled(num: UInt128(config.size) * 8_000_000_000,
                          den: UInt128(config.refillTimeNanoseconds),
                          units: [(1, "bit/s"), (1_000, "kbit/s"), (1_000_000, "Mbit/s"),
                                  (1_000_000_000, "Gbit/s"), (1_000_000_000_000, "Tbit/s")])
        var text = "\(rate), burst \(bytes(config.size))"
        if config.oneTimeBurst > 0 { text += ", one-time burst \(bytes(config.oneTimeBurst))" }
        return text
    }

    /// "1000 frames/s, burst 8 frames[, one-time burst 100 frames]", or "unlimited".
    public static func ops(_ config: BucketConfig) -> String {
        guard config.isEnabled else { return "unlimited" }
        let rate = scaled(num: UInt128(config.size) * 1_000_000_000,
                          den: UInt128(config.refillTimeNanoseconds), units: [(1, "frames/s")])
        var text = "\(rate), burst \(config.size) frames"
        if config.oneTimeBurst > 0 { text += ", one-time burst \(config.oneTimeBurst) frames" }
        return text
    }

    /// "bandwidth 100 Mbit/s, burst 64 KiB; ops 1000 frames/s, burst 8 frames", or "unlimited".
    public static func direction(_ limits: DirectionLimits) -> String {
        var parts: [String] = []
        if let b = limits.bandwidth, b.isEnabled { parts.append("bandwidth " + bandwidth(b)) }
        if let o = limits.ops, o.isEnabled { parts.append("ops " + ops(o)) }
        return parts.isEmpty ? "unlimited" : parts.joined(separator: "; ")
    }

    /// "tx: ...; rx: ..." on one line (with " | " between directions).
    public static func limits(_ limits: RateLimits) -> String {
        "tx: \(direction(limits.tx)) | rx: \(direction(limits.rx))"
    }

    /// A byte count: "80 KiB", "1.25 MB", "1500 B", "1.17 MiB".
    public static func bytes(_ n: UInt64) -> String {
        let binary: [(UInt128, String)] = [(1 << 40, "TiB"), (1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")]
        let decimal: [(UInt128, String)] = [(1_000_000_000_000, "TB"), (1_000_000_000, "GB"), (1_000_000, "MB"), (1_000, "KB")]
        let v = UInt128(n)
        if let u = binary.first(where: { v >= $0.0 }), v % u.0 == 0 {
            return "\(v / u.0) \(u.1)"
        }
        if let u = decimal.first(where: { v >= $0.0 }), v % (u.0 / 1000) == 0 {
            return "\(Self.decimal(v / (u.0 / 1000), scale: 3)) \(u.1)"
        }
        if let u = binary.first(where: { v >= $0.0 }) {
            let hundredths = (v * 100 + u.0 / 2) / u.0
            return "\(Self.decimal(hundredths, scale: 2)) \(u.1)"
        }
        return "\(n) B"
    }

    /// Tokens per second of a bucket (bytes/s or frames/s); 0 when it is disabled.
    public static func ratePerSecond(_ config: BucketConfig) -> Double {
        guard config.isEnabled else { return 0 }
        return Double(config.size) * 1e9 / Double(config.refillTimeNanoseconds)
    }

    /// `value` rounded to at most `fractionDigits` decimals, without trailing zeros: 1.5, 100, 0.333.
    public static func number(_ value: Double, fractionDigits: Int) -> String {
        guard value.isFinite else { return value.isNaN ? "NaN" : (value < 0 ? "-Inf" : "Inf") }
        let digits = max(0, min(fractionDigits, 9))
        var scale: Double = 1
        for _ in 0..<digits { scale *= 10 }
        let scaled = (abs(value) * scale).rounded()
        guard scaled < 9e18 else { return String(value) }
        return (value < 0 && scaled > 0 ? "-" : "") + decimal(UInt128(scaled), scale: digits)
    }

    /// `value` / 10^`scale`, exactly, without trailing zeros: (1500, 3) -> "1.5", (2000, 3) -> "2".
    public static func decimal(_ value: UInt128, scale: Int) -> String {
        var divisor: UInt128 = 1
        for _ in 0..<scale { divisor *= 10 }
        let (whole, fraction) = value.quotientAndRemainder(dividingBy: divisor)
        guard fraction > 0 else { return "\(whole)" }
        var digits = String(fraction)
        digits = String(repeating: "0", count: scale - digits.count) + digits
        while digits.last == "0" { digits.removeLast() }
        return "\(whole).\(digits)"
    }

    /// num/den in the largest unit not exceeding it, rounded to 3 decimals, trailing zeros dropped.
    static func scaled(num: UInt128, den: UInt128, units: [(UInt128, String)]) -> String {
        var index = 0
        while index + 1 < units.count, num >= den * units[index + 1].0 { index += 1 }
        var thousandths = (num * 1000 + den * units[index].0 / 2) / (den * units[index].0)
        // Rounding up to 1000.000 of a unit: show 1 of the next unit instead.
        if thousandths >= 1_000_000, index + 1 < units.count, units[index + 1].0 == units[index].0 * 1000 {
            index += 1
            thousandths /= 1000
        }
        return "\(decimal(thousandths, scale: 3)) \(units[index].1)"
    }
}

extension BucketConfig: CustomStringConvertible {
    /// Size, refill time and one-time burst in raw units.
    public var description: String {
        "size \(size), refill \(refillTimeNanoseconds) ns, one-time burst \(oneTimeBurst)"
    }
}

extension DirectionLimits: CustomStringConvertible {
    public var description: String { LimitFormatter.direction(self) }
}
