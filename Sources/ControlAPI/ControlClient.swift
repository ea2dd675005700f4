// Typed access to a tapwire control API, for tapwirectl and tests.

import RateLimiter

/// Why a control API call failed. `description` is one line meant for a person.
public enum ControlClientError: Error, Sendable, Equatable, CustomStringConvertible {
    /// No HTTP answer (no socket, refused, timeout, ...).
    case transport(UnixHTTPClientError)
    /// The daemon answered with an error status; `message` is its {"error": ...}.
    case http(status: Int, message: String)
    /// The daemon answered 2xx but the body is not what was expected.
    case unexpectedBody(String)

    public var description: String {
        switch self {
        case .transport(let error): return error.description
        case .http(let status, let message): return "tapwire answered \(status): \(message)"
        case .unexpectedBody(let detail): return "unexpected answer from tapwire: \(detail)"
        }
    }
}

/// The control API of one tapwire process, over its unix socket.
public struct ControlClient: Sendable {
    public var http: UnixHTTPClient

    public init(socketPath: String, timeout: Duration = .seconds(5)) {
        http = UnixHTTPClient(socketPath: socketPath, timeout: timeout)
    }

    /// GET /vm.
    public func status() async throws(ControlClientError) -> VMStatus {
        try decode(VMStatus.self, try await call("GET", "/vm"))
    }

    /// GET /metrics.json.
    public func metrics() async throws(ControlClientError) -> MetricsSnapshot {
        try decode(MetricsSnapshot.self, try await call("GET", "/metrics.json"))
    }

    /// GET /metrics (Prometheus text).
    public func prometheus() async throws(ControlClientError) -> String {
        try await call("GET", "/metrics").text
    }

    /// GET /healthz.
    public func health() async throws(ControlClientError) -> HealthBody {
        try decode(HealthBody.self, try await call("GET", "/healthz"))
    }

    /// PATCH (replace: false) or PUT (replace: true) /vm/limits.
    public func updateLimits(_ update: LimitUpdate, replace: Bool = false) async throws(ControlClientError) -> VMStatus {
        try await send(replace ? "PUT" : "PATCH", "/vm/limits", update, as: VMStatus.self)
    }

    /// PATCH (replace: false) or PUT (replace: true) /vm/port-security; GET with no update.
    public func portSecurity(_ update: PortSecurityUpdate? = nil, replace: Bool = false) async throws(ControlClientError) -> PortSecurityStatus {
        guard let update else { return try decode(PortSecurityStatus.self, try await call("GET", "/vm/port-security")) }
        return try await send(replace ? "PUT" : "PATCH", "/vm/port-security", update, as: PortSecurityStatus.self)
    }

    /// `body` as JSON, the answer decoded as `Reply`.
    private func send<Body: Encodable, Reply: Decodable>(_ method: String, _ path: String, _ body: Body,
                                                         as reply: Reply.Type) async throws(ControlClientError) -> Reply {
        let bytes: [UInt8]
        do {
            bytes = try ControlJSON.encode(body)
        } catch {
            throw .unexpectedBody("cannot encode the update: \(error)")
        }
        return try decode(reply, try await call(method, path, body: bytes))
    }

    /// Any request; a non-2xx answer throws `.http` with the server's error message.
    public func call(_ method: String, _ path: String, body: [UInt8]? = nil) async throws(ControlClientError) -> UnixHTTPResponse {
        let response: UnixHTTPResponse
        do {
            response = try await http.request(method, path, body: body)
        } catch {
            throw .transport(error)
        }
        guard (200..<300).contains(response.status) else {
            throw .http(status: response.status, message: Self.errorMessage(response))
        }
        return response
    }

    /// The server's {"error": "..."} text, else the body's first line, else the reason phrase.
    public static func errorMessage(_ response: UnixHTTPResponse) -> String {
        if let body = try? ControlJSON.decode(ErrorBody.self, from: response.body) { return body.error }
        let firstLine = response.text.split(whereSeparator: \.isNewline).first.map(String.init) ?? ""
        return firstLine.isEmpty ? response.reason : String(firstLine.prefix(200))
    }

    private func decode<T: Decodable>(_ type: T.Type, _ response: UnixHTTPResponse) throws(ControlClientError) -> T {
        do {
            return try ControlJSON.decode(type, from: response.body)
        } catch {
            throw .unexpectedBody(error.message)
        }
    }
}
