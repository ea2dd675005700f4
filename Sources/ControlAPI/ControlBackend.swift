// What the control server needs from the daemon.

import RateLimiter

/// Implemented by the daemon (hopping onto its event-loop thread to read or change state)
/// and by fakes in tests. Every call comes from the control server's own thread, never
/// from a packet thread.
public protocol ControlBackend: Sendable {
    /// A consistent view of the VM.
    func status() async -> VMStatus
    /// All counters at one instant.
    func metrics() async -> MetricsSnapshot
    /// GET /metrics: the counters, and of the status what Prometheus shows (name, tap, mac,
    /// socket path, state, queue pairs enabled, limits). The daemon reads atomics only, so a
    /// scrape never waits for its loop; by default `status()` and `metrics()`.
    func scrape() async -> (status: VMStatus, metrics: MetricsSnapshot)
    /// Applies `update` and returns the status with the limits now in force.
    /// `replace` is true for PUT (both directions fully replaced; anything not given
    /// becomes unlimited: see `LimitUpdate.applied(to:replace:)`) and false for PATCH
    /// (only the given fields change). Throw `ControlAPIError` to choose the HTTP status
    /// and message; any other error becomes a 500.
    func updateLimits(_ update: LimitUpdate, replace: Bool) async throws -> VMStatus
    /// Applies `update` to the VM's port security (PUT: `replace`, PATCH: only what is given)
    /// and returns the policy now in force. Throws like `updateLimits`.
    func updatePortSecurity(_ update: PortSecurityUpdate, replace: Bool) async throws -> PortSecurityStatus
}

extension ControlBackend {
    public func scrape() async -> (status: VMStatus, metrics: MetricsSnapshot) {
        async let status = status()
        return (await status, await metrics())
    }
}

/// An error with an HTTP status, reported to the client as `{"error": message}`.
public struct ControlAPIError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The HTTP status code (4xx or 5xx).
    public var status: Int
    public var message: String

    public init(status: Int, message: String) {
        self.status = status
        self.message = message
    }

    /// 400: the request was understood but its content is not acceptable.
    public static func badRequest(_ message: String) -> ControlAPIError { .init(status: 400, message: message) }
    /// 409: not possible in the current state.
    public static func conflict(_ message: String) -> ControlAPIError { .init(status: 409, message: message) }

    public var description: String { message }
}
