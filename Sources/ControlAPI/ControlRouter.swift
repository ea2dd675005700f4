// Request routing, independent of the transport: (method, path, body) -> response.

import NIOHTTP1
import RateLimiter

/// A complete HTTP response of the control API.
struct ControlResponse: Sendable {
    var status: HTTPResponseStatus
    var contentType: String
    var body: [UInt8]
    var extraHeaders: [(String, String)] = []
    /// Close the connection after this response.
    var close = false

    static let jsonType = "application/json"

    static func json<T: Encodable>(_ value: T, status: HTTPResponseStatus = .ok) -> ControlResponse {
        do {
            return ControlResponse(status: status, contentType: jsonType, body: try ControlJSON.encode(value))
        } catch {
            return .error(.internalServerError, "cannot encode the response: \(error)")
        }
    }

    static func error(_ status: HTTPResponseStatus, _ message: String) -> ControlResponse {
        let body = (try? ControlJSON.encode(ErrorBody(error: message)))
            ?? Array("{\"error\": \"internal error\"}\n".utf8)
        return ControlResponse(status: status, contentType: jsonType, body: body)
    }
}

/// The endpoints of the control API.
struct ControlRouter: Sendable {
    let backend: any ControlBackend

    /// Path -> allowed methods (HEAD is allowed wherever GET is).
    static let routes: [String: [HTTPMethod]] = [
        "/vm": [.GET],
        "/vm/limits": [.GET, .PUT, .PATCH],
        "/vm/port-security": [.GET, .PUT, .PATCH],
        "/metrics": [.GET],
        "/metrics.json": [.GET],
        "/healthz": [.GET],
    ]

    static func allowHeader(_ methods: [HTTPMethod]) -> String {
        var names = methods.map(\.rawValue)
        if methods.contains(.GET) { names.insert("HEAD", at: 1) }
        return names.joined(separator: ", ")
    }

    /// The path without query string or fragment; a trailing slash is ignored.
    static func path(of uri: String) -> String {
        var path = Substring(uri)
        if let cut = path.firstIndex(where: { $0 == "?" || $0 == "#" }) { path = path[..<cut] }
        if path.count > 1, path.hasSuffix("/") { path = path.dropLast() }
        return String(path)
    }

    func handle(method: HTTPMethod, uri: String, body: [UInt8]) async -> ControlResponse {
        let path = Self.path(of: uri)
        guard let allowed = Self.routes[path] else {
            return .error(.notFound, "no such endpoint: \(path); try GET /vm, GET /metrics, GET /metrics.json, PATCH /vm/limits, PUT /vm/limits, GET|PATCH|PUT /vm/port-security, GET /healthz")
        }
        let effective = method == .HEAD ? HTTPMethod.GET : method
        guard allowed.contains(effective) else {
            var response = ControlResponse.error(.methodNotAllowed,
                                                 "\(method.rawValue) is not allowed on \(path); allowed: \(Self.allowHeader(allowed))")
            response.extraHeaders.append(("Allow", Self.allowHeader(allowed)))
            return response
        }
        switch (path, effective) {
        case ("/vm", _):
            return .json(await backend.status())
        case ("/vm/limits", .GET):
            return .json(await backend.status().limits)
        case ("/vm/limits", _):
            return await update(LimitUpdate.self, body: body, example: #"{"tx": {"bandwidth": "100Mbit"}, "rx": {"ops": "10000"}}"#,
                                what: "the limits") { try await backend.updateLimits($0, replace: effective == .PUT) }
        case ("/vm/port-security", .GET):
            return .json(await backend.status().portSecurity)
        case ("/vm/port-security", _):
            return await update(PortSecurityUpdate.self, body: body, example: #"{"allowed_ips": ["10.0.0.5/32"]}"#,
                                what: "port security") { try await backend.updatePortSecurity($0, replace: effective == .PUT) }
        case ("/metrics", _):
            let (status, metrics) = await backend.scrape()
            let text = PrometheusRenderer.render(status: status, metrics: metrics)
            return ControlResponse(status: .ok, contentType: PrometheusRenderer.contentType, body: Array(text.utf8))
        case ("/metrics.json", _):
            return .json(await backend.metrics())
        case ("/healthz", _):
            return .json(HealthBody(state: await backend.status().state))
        default:
            return .error(.notFound, "no such endpoint: \(path)")
        }
    }

    /// A PUT or PATCH: the JSON body decoded, handed to `apply`, and its answer returned as
    /// JSON; what is wrong with the body or the update becomes a 4xx naming it.
    private func update<Update: Decodable, Reply: Encodable & Sendable>(
        _ type: Update.Type, body: [UInt8], example: String, what: String,
        apply: (Update) async throws -> Reply
    ) async -> ControlResponse {
        guard body.contains(where: { !($0 == 0x20 || $0 == 0x09 || $0 == 0x0A || $0 == 0x0D) }) else {
            return .error(.badRequest, "empty body: expected JSON like \(example)")
        }
        let update: Update
        do {
            update = try ControlJSON.decode(type, from: body)
        } catch {
            return .error(HTTPResponseStatus(statusCode: error.status), error.message)
        }
        do {
            return .json(try await apply(update))
        } catch let error as ControlAPIError {
            return .error(HTTPResponseStatus(statusCode: error.status), error.message)
        } catch let error as LimitParseError {
            return .error(.badRequest, error.description)
        } catch {
            return .error(.internalServerError, "cannot update \(what): \(error)")
        }
    }
}
