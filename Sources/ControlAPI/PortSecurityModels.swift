import PortSecurity
import RateLimiter

/// `GET /vm/port-security`: what the VM may send and receive at its vNIC.
public struct PortSecurityStatus: Codable, Sendable, Equatable {
    public var enabled: Bool
    /// The only source MAC the guest may use (the device's --mac), if it has one.
    public var mac: String?
    /// Prefixes the guest may send from, e.g. ["10.0.0.5/32", "2001:db8::5/128"].
    public var allowedIPs: [String]
    /// Whether DHCP server replies and router advertisements from the guest pass.
    public var allowRouter: Bool

    public init(enabled: Bool = false, mac: String? = nil, allowedIPs: [String] = [], allowRouter: Bool = false) {
        self.enabled = enabled
        self.mac = mac
        self.allowedIPs = allowedIPs
        self.allowRouter = allowRouter
    }

    public static let off = PortSecurityStatus()

    enum CodingKeys: String, CodingKey {
        case enabled, mac
        case allowedIPs = "allowed_ips"
        case allowRouter = "allow_router"
    }
}

/// The body of `PUT` / `PATCH /vm/port-security`. PATCH changes only the fields given; PUT
/// replaces the whole policy (a field left out is off or empty). Unknown keys are refused.
public struct PortSecurityUpdate: Codable, Sendable, Equatable {
    public var enabled: Bool?
    public var allowedIPs: [String]?
    public var allowRouter: Bool?

    public init(enabled: Bool? = nil, allowedIPs: [String]? = nil, allowRouter: Bool? = nil) {
        self.enabled = enabled
        self.allowedIPs = allowedIPs
        self.allowRouter = allowRouter
    }

    enum CodingKeys: String, CodingKey, CaseIterable {
        case enabled
        case allowedIPs = "allowed_ips"
        case allowRouter = "allow_router"
    }

    public init(from decoder: any Decoder) throws {
        let keys = try decoder.container(keyedBy: JSONKey.self).allKeys.map(\.stringValue)
        if let unknown = keys.first(where: { CodingKeys(rawValue: $0) == nil }) {
            throw DecodingError.dataCorrupted(.init(codingPath: [JSONKey(unknown)], debugDescription:
                "unknown key; expected \(CodingKeys.allCases.map { "\"\($0.rawValue)\"" }.joined(separator: ", "))"))
        }
        let c = try decoder.container(keyedBy: CodingKeys.self)
        enabled = try c.decodeIfPresent(Bool.self, forKey: .enabled)
        allowedIPs = try c.decodeIfPresent([String].self, forKey: .allowedIPs)
        allowRouter = try c.decodeIfPresent(Bool.self, forKey: .allowRouter)
    }

    /// The policy after this update: a PATCH keeps what it does not name, a PUT does not.
    /// Giving allowed_ips turns port security on unless `enabled` says otherwise.
    public func applied(to current: PortSecurityStatus, replace: Bool) throws(ControlAPIError) -> PortSecurityStatus {
        var next = replace ? PortSecurityStatus(mac: current.mac) : current
        if let allowedIPs {
            do { next.allowedIPs = try IPNetwork.parse(allowedIPs).map(\.description) }
            catch { throw .badRequest("allowed_ips: \(error)") }
        }
        if let allowRouter { next.allowRouter = allowRouter }
        next.enabled = enabled ?? (allowedIPs != nil ? true : (replace ? false : current.enabled))
        if next.enabled && next.mac == nil {
            throw .conflict("port security needs the VM's MAC: start tapwire with --mac")
        }
        return next
    }
}

extension PortSecurityStatus {
    /// One line for the log: "on: 52:54:00:12:34:56 from 10.0.0.5/32, no router" or "off".
    public var summary: String {
        guard enabled else { return "off" }
        let sources = allowedIPs.isEmpty ? "DHCP and link-local only" : allowedIPs.joined(separator: ",")
        return "on: \(mac ?? "?") from \(sources)\(allowRouter ? ", router messages allowed" : ", no router messages")"
    }
}
