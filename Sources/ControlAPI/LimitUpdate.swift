// The body of PUT/PATCH /vm/limits.
//
// {"tx": {"bandwidth": "100Mbit,burst=64KiB", "ops": "10000"}, "rx": {"ops": null}}
//
// Each direction ("tx" = what the guest transmits, "rx" = what it receives) is optional.
// Within a direction, "bandwidth" and "ops" are each one of:
//   absent              PATCH: keep the current limit.  PUT: no limit.
//   null or "off"       remove the limit
//   "RATE[,burst=...]"  tapwire's flag syntax (--tx-bandwidth / --tx-ops), parsed by LimitParser
//   12500000            a plain number: bytes/s (bandwidth) or frames/s (ops), default burst
//   {"size": 81920, "refill_time_ns": 6553600, "one_time_burst": 0}
//                       RateLimiter's canonical bucket
// A direction may also use RateLimiter's convenience keys ("bandwidth_rate",
// "bandwidth_burst", "ops_rate", ...; see RateLimiter/Limits.swift), and a whole direction
// may be null or "off" to remove both of its limits. Unknown keys are errors: a typo must
// never silently mean "unlimited".

import RateLimiter

/// A change to one direction's limits.
public struct DirectionUpdate: Sendable, Equatable {
    public typealias Change = LimitPatch.Change

    public var bandwidth: Change
    public var ops: Change

    public init(bandwidth: Change = .keep, ops: Change = .keep) {
        self.bandwidth = bandwidth
        self.ops = ops
    }

    /// Sets both limits to exactly `limits` (a nil bucket removes that limit).
    public init(setting limits: DirectionLimits) {
        self.bandwidth = limits.bandwidth.map { .set($0) } ?? .remove
        self.ops = limits.ops.map { .set($0) } ?? .remove
    }

    /// Removes both limits.
    public static let removeAll = DirectionUpdate(bandwidth: .remove, ops: .remove)

    /// Parses flag-style values: nil keeps, "off" removes, anything else goes through
    /// LimitParser. `bandwidthFlag` / `opsFlag` name the field in error messages
    /// (e.g. "--tx-bandwidth" or "tx.bandwidth").
    public static func parse(bandwidth: String?, ops: String?,
                             bandwidthFlag: String, opsFlag: String) throws(LimitParseError) -> DirectionUpdate {
        var update = DirectionUpdate()
        if let bandwidth {
            update.bandwidth = isOff(bandwidth) ? .remove : .set(try LimitParser.bandwidth(bandwidth, flag: bandwidthFlag))
        }
        if let ops {
            update.ops = isOff(ops) ? .remove : .set(try LimitParser.ops(ops, flag: opsFlag))
        }
        return update
    }

    /// "off" (any case, surrounding blanks ignored) removes a limit.
    public static func isOff(_ text: String) -> Bool {
        text.trimmingBlanks().lowercased() == "off"
    }

    /// True when nothing changes.
    public var isEmpty: Bool { bandwidth == .keep && ops == .keep }

    /// PATCH semantics: `.keep` keeps what `current` has.
    public func applied(to current: DirectionLimits) -> DirectionLimits {
        DirectionLimits(bandwidth: bandwidth.applied(to: current.bandwidth), ops: ops.applied(to: current.ops))
    }

    /// PUT semantics: `.keep` (not given) means no limit.
    public var replacement: DirectionLimits {
        DirectionLimits(bandwidth: bandwidth.applied(to: nil), ops: ops.applied(to: nil))
    }

    /// The same change as RateLimiter's patch type.
    public var patch: LimitPatch { LimitPatch(bandwidth: bandwidth, ops: ops) }
}

/// The body of PUT and PATCH /vm/limits.
public struct LimitUpdate: Sendable, Equatable {
    /// nil: the direction was not mentioned.
    public var tx: DirectionUpdate?
    public var rx: DirectionUpdate?

    public init(tx: DirectionUpdate? = nil, rx: DirectionUpdate? = nil) {
        self.tx = tx
        self.rx = rx
    }

    /// True when nothing changes under PATCH.
    public var isEmpty: Bool { (tx?.isEmpty ?? true) && (rx?.isEmpty ?? true) }

    /// The limits after this update: `replace` (PUT) replaces both directions, anything
    /// not given becoming unlimited; otherwise (PATCH) only the given fields change.
    public func applied(to current: RateLimits, replace: Bool) -> RateLimits {
        if replace {
            return RateLimits(tx: tx?.replacement ?? .unlimited, rx: rx?.replacement ?? .unlimited)
        }
        return RateLimits(tx: tx?.applied(to: current.tx) ?? current.tx,
                          rx: rx?.applied(to: current.rx) ?? current.rx)
    }

    /// The PATCH meaning of this update as RateLimiter's patch type.
    public var patch: RateLimitsPatch {
        RateLimitsPatch(tx: tx?.patch ?? LimitPatch(), rx: rx?.patch ?? LimitPatch())
    }
}

// MARK: - Codable

struct ControlCodingKey: CodingKey, Hashable {
    var stringValue: String
    var intValue: Int? { nil }
    init(_ string: String) { stringValue = string }
    init?(stringValue: String) { self.stringValue = stringValue }
    init?(intValue: Int) { nil }
}

func dottedPath(_ path: [any CodingKey]) -> String {
    path.map { $0.intValue.map { "[\($0)]" } ?? $0.stringValue }.joined(separator: ".")
}

extension LimitUpdate: Codable {
    static let directionKeys = ["tx", "rx"]

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: ControlCodingKey.self)
        for key in c.allKeys where !Self.directionKeys.contains(key.stringValue) {
            throw DecodingError.dataCorrupted(DecodingError.Context(
                codingPath: c.codingPath + [key],
                debugDescription: "unknown key \"\(key.stringValue)\"; expected \"tx\" and/or \"rx\""))
        }
        tx = try Self.decodeDirection(c, "tx")
        rx = try Self.decodeDirection(c, "rx")
    }

    private static func decodeDirection(_ c: KeyedDecodingContainer<ControlCodingKey>,
                                        _ name: String) throws -> DirectionUpdate? {
        let key = ControlCodingKey(name)
        guard c.contains(key) else { return nil }
        if try c.decodeNil(forKey: key) { return .removeAll }
        if let text = try? c.decode(String.self, forKey: key) {
            if DirectionUpdate.isOff(text) { return .removeAll }
            throw DecodingError.dataCorrupted(DecodingError.Context(
                codingPath: c.codingPath + [key],
                debugDescription: "expected an object like {\"bandwidth\": \"100Mbit\", \"ops\": \"10000\"}, null or \"off\", not the string \"\(text)\""))
        }
        do {
            return try c.decode(DirectionUpdate.self, forKey: key)
        } catch DecodingError.typeMismatch(_, let context) where context.codingPath.count == c.codingPath.count + 1 {
            throw DecodingError.dataCorrupted(DecodingError.Context(
                codingPath: c.codingPath + [key],
                debugDescription: "expected an object like {\"bandwidth\": \"100Mbit\", \"ops\": \"10000\"}, null or \"off\""))
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: ControlCodingKey.self)
        try c.encodeIfPresent(tx, forKey: ControlCodingKey("tx"))
        try c.encodeIfPresent(rx, forKey: ControlCodingKey("rx"))
    }
}

extension DirectionUpdate: Codable {
    static let shortKeys: Set<String> = ["bandwidth", "ops"]

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: ControlCodingKey.self)
        let keys = Set(c.allKeys.map(\.stringValue))
        guard keys.isSubset(of: Self.shortKeys) else {
            // RateLimiter's convenience form ("bandwidth_rate", ...), which also reports
            // unknown keys and mixed forms.
            let patch = try LimitPatch(from: decoder)
            self.init(bandwidth: patch.bandwidth, ops: patch.ops)
            return
        }
        self.init(bandwidth: try Self.decodeChange(c, "bandwidth"),
                  ops: try Self.decodeChange(c, "ops"))
    }

    private static func decodeChange(_ c: KeyedDecodingContainer<ControlCodingKey>,
                                     _ name: String) throws -> Change {
        let key = ControlCodingKey(name)
        guard c.contains(key) else { return .keep }
        if try c.decodeNil(forKey: key) { return .remove }
        let path = c.codingPath + [key]
        let field = dottedPath(path)
        let isBandwidth = name == "bandwidth"
        var text: String?
        if let s = try? c.decode(String.self, forKey: key) {
            if isOff(s) { return .remove }
            text = s
        } else if let n = try? c.decode(UInt64.self, forKey: key) {
            text = String(n)
        }
        if let text {
            do {
                return .set(isBandwidth ? try LimitParser.bandwidth(text, flag: field)
                                        : try LimitParser.ops(text, flag: field))
            } catch {
                throw DecodingError.dataCorrupted(DecodingError.Context(
                    codingPath: path, debugDescription: error.description, underlyingError: error))
            }
        }
        do {
            return .set(try c.decode(BucketConfig.self, forKey: key))
        } catch DecodingError.typeMismatch(_, let context) where context.codingPath.count == path.count {
            let syntax = isBandwidth ? "\"100Mbit,burst=64KiB\"" : "\"10000,burst=64\""
            throw DecodingError.dataCorrupted(DecodingError.Context(
                codingPath: path,
                debugDescription: "expected a string like \(syntax), \"off\", null, or an object {\"size\": N, \"refill_time_ns\": N, \"one_time_burst\": N}"))
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: ControlCodingKey.self)
        for (name, change) in [("bandwidth", bandwidth), ("ops", ops)] {
            switch change {
            case .keep: break
            case .remove: try c.encodeNil(forKey: ControlCodingKey(name))
            case .set(let config): try c.encode(config, forKey: ControlCodingKey(name))
            }
        }
    }
}

extension StringProtocol {
    func trimmingBlanks() -> SubSequence {
        var s = self[...]
        while let f = s.first, f == " " || f == "\t" || f == "\n" || f == "\r" { s.removeFirst() }
        while let l = s.last, l == " " || l == "\t" || l == "\n" || l == "\r" { s.removeLast() }
        return s
    }
}
