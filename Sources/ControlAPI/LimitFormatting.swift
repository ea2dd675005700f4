// Human-readable numbers for status output (no Foundation). Limits themselves are
// described by RateLimiter's LimitFormatter, so logs and the API say the same thing.

import RateLimiter

/// Formats rates and numbers for people: "100 Mbit/s", "1.5".
public enum LimitFormatting {
    /// "bandwidth 100 Mbit/s, burst 80 KiB; ops 1000 frames/s, burst 8 frames", or "unlimited".
    public static func describe(_ limits: DirectionLimits) -> String {
        LimitFormatter.direction(limits)
    }

    /// Tokens per second of a bucket (bytes/s or frames/s); 0 when it is disabled.
    public static func ratePerSecond(_ config: BucketConfig) -> Double {
        guard config.isEnabled else { return 0 }
        return Double(config.size) * 1e9 / Double(config.refillTimeNanoseconds)
    }

    /// Bytes per second as bits per second with a decimal prefix: "100 Mbit/s", "1.5 Gbit/s".
    public static func bitRate(bytesPerSecond: Double) -> String {
        let bits = bytesPerSecond * 8
        let units: [(Double, String)] = [(1e12, "Tbit/s"), (1e9, "Gbit/s"), (1e6, "Mbit/s"), (1e3, "kbit/s")]
        for (scale, name) in units where bits >= scale {
            return number(bits / scale, fractionDigits: 3) + " " + name
        }
        return number(bits, fractionDigits: 3) + " bit/s"
    }

    /// `value` rounded to at most `fractionDigits` decimals, without trailing zeros: 1.5, 100, 0.333.
    public static func number(_ value: Double, fractionDigits: Int) -> String {
        guard value.isFinite else { return value.isNaN ? "NaN" : (value < 0 ? "-Inf" : "Inf") }
        var scale: Double = 1
        for _ in 0..<max(0, min(fractionDigits, 9)) { scale *= 10 }
        let scaled = (abs(value) * scale).rounded()
        guard scaled < 9e18 else { return String(value) }
        let total = UInt64(scaled)
        let divisor = UInt64(scale)
        var text = String(total / divisor)
        let fraction = total % divisor
        if fraction > 0 {
            var digits = String(fraction)
            digits = String(repeating: "0", count: String(divisor).count - 1 - digits.count) + digits
            while digits.last == "0" { digits.removeLast() }
            text += "." + digits
        }
        return (value < 0 && total > 0 ? "-" : "") + text
    }
}
