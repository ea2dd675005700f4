import ControlAPI
import Logging
import RateLimiter
import Testing

let quietLogger: Logger = {
    var logger = Logger(label: "test")
    logger.logLevel = .critical
    return logger
}()

func client(_ path: String) -> ControlClient { ControlClient(socketPath: path, timeout: .seconds(2)) }

@Suite("ControlServer over a real unix socket")
struct ControlServerTests {
    @Test func getVMRoundTripsTheBackendStatus() async throws {
        try await withServer { _, backend, client in
            let response = try await client.call("GET", "/vm")
            #expect(response.status == 200)
            #expect(response.header("content-type") == "application/json")
            #expect(response.text.contains("\"negotiated_features_raw\""))
            let status = try await client.status()
            #expect(status == (await backend.status()))
            #expect(status.queues[1].fault == "descriptor 7 points outside guest memory")
            #expect(status.negotiatedFeaturesRaw == (1 << 32) | (1 << 5))
            #expect(status.limits.txHuman == "unlimited")
        }
    }

    @Test func metricsJSONRoundTrips() async throws {
        try await withServer { _, _, client in
            let metrics = try await client.metrics()
            #expect(metrics == FakeBackend.snapshot)
            #expect(metrics.queues[0].totalDrops == 8)
        }
    }

    @Test func prometheusOutputParsesAndHasTheSeries() async throws {
        try await withServer { _, _, client in
            _ = try await client.updateLimits(LimitUpdate(tx: DirectionUpdate(
                bandwidth: .set(try LimitParser.bandwidth("100Mbit", flag: "t")))))
            let response = try await client.call("GET", "/metrics")
            #expect(response.header("Content-Type") == "text/plain; version=0.0.4; charset=utf-8")
            let samples = try parsePrometheus(response.text)
            func value(_ name: String, _ labels: [String: String] = [:]) -> Double? {
                samples.first { $0.name == name && $0.labels == labels }?.value
            }
            #expect(samples.allSatisfy { $0.name.hasPrefix("tapwire_") })
            #expect(value("tapwire_up") == 1)
            #expect(value("tapwire_connected") == 1)
            #expect(value("tapwire_frames_total", ["queue": "0", "direction": "rx"]) == 1000)
            #expect(value("tapwire_frames_total", ["queue": "1", "direction": "tx"]) == 2000)
            #expect(value("tapwire_bytes_total", ["queue": "1", "direction": "tx"]) == 3_000_000_000_000)
            #expect(value("tapwire_kicks_total", ["queue": "1", "direction": "tx"]) == 1999)
            #expect(value("tapwire_interrupts_total", ["queue": "0", "direction": "rx"]) == 900)
            #expect(value("tapwire_interrupts_held_total", ["queue": "0", "direction": "rx"]) == 40)
            #expect(value("tapwire_throttled_events_total", ["queue": "0", "direction": "rx"]) == 4)
            #expect(value("tapwire_throttled_seconds_total", ["queue": "0", "direction": "rx"]) == 1.5)
            #expect(value("tapwire_drops_total", ["queue": "0", "direction": "rx", "reason": "no_rx_buffer"]) == 7)
            #expect(value("tapwire_drops_total", ["queue": "0", "direction": "rx", "reason": "tap_error"]) == 1)
            #expect(value("tapwire_connections_total") == 3)
            #expect(value("tapwire_disconnects_total") == 2)
            #expect(value("tapwire_rate_limit_bytes_per_second", ["direction": "tx"]) == 12_500_000)
            #expect(value("tapwire_rate_limit_bytes_per_second", ["direction": "rx"]) == 0)
            // The VM name has a quote in it: escaped in the label, and parsed back intact.
            #expect(samples.first { $0.name == "tapwire_info" }?.labels["vm"] == "vm \"one\"")
            #expect(response.text.contains("# TYPE tapwire_frames_total counter\n"))
            #expect(response.text.contains("# HELP tapwire_drops_total "))
        }
    }

    @Test func healthz() async throws {
        try await withServer { _, _, client in
            let health = try await client.health()
            #expect(health == HealthBody(status: "ok", state: .connected))
        }
    }

    @Test func patchWithFlagStringsReachesTheBackendAsBuckets() async throws {
        try await withServer { _, backend, client in
            let body = Array(#"{"tx": {"bandwidth": "100Mbit"}, "rx": {"ops": "10000,burst=50"}}"#.utf8)
            let response = try await client.call("PATCH", "/vm/limits", body: body)
            #expect(response.status == 200)
            let updates = await backend.receivedUpdates
            try #require(updates.count == 1)
            #expect(updates[0].replace == false)
            // 100 Mbit/s = 12.5 MB/s; default bucket 80 KiB refilled in 81920 / 12.5e6 s.
            #expect(updates[0].update.tx?.bandwidth == .set(BucketConfig(size: 81920, refillTimeNanoseconds: 6_553_600)))
            #expect(updates[0].update.tx?.ops == .keep)
            #expect(updates[0].update.rx?.ops == .set(BucketConfig(size: 50, refillTimeNanoseconds: 5_000_000)))
            #expect(updates[0].update.rx?.bandwidth == .keep)
            // The reply is the new status.
            let status = try ControlJSON.decode(VMStatus.self, from: response.body)
            #expect(status.limits.tx.bandwidth == BucketConfig(size: 81920, refillTimeNanoseconds: 6_553_600))
            #expect(status.limits.txHuman.contains("100 Mbit/s"))
            #expect(status.limits.rx.ops?.size == 50)
        }
    }

    @Test func patchKeepsWhatIsNotMentionedAndPutReplacesEverything() async throws {
        try await withServer { _, backend, client in
            var update = LimitUpdate(tx: try DirectionUpdate.parse(bandwidth: "1Gbit", ops: "1000",
                                                                   bandwidthFlag: "tx.bandwidth", opsFlag: "tx.ops"),
                                     rx: try DirectionUpdate.parse(bandwidth: "10MB", ops: nil,
                                                                   bandwidthFlag: "rx.bandwidth", opsFlag: "rx.ops"))
            var status = try await client.updateLimits(update)
            #expect(status.limits.tx.bandwidth != nil && status.limits.tx.ops != nil && status.limits.rx.bandwidth != nil)

            // PATCH: "off" removes tx ops, null removes rx bandwidth, tx bandwidth untouched.
            let patch = Array(#"{"tx": {"ops": "off"}, "rx": {"bandwidth": null}}"#.utf8)
            status = try ControlJSON.decode(VMStatus.self, from: try await client.call("PATCH", "/vm/limits", body: patch).body)
            #expect(status.limits.tx.bandwidth == (try LimitParser.bandwidth("1Gbit", flag: "x")))
            #expect(status.limits.tx.ops == nil)
            #expect(status.limits.rx == .unlimited)

            // PUT with only rx: tx becomes unlimited.
            update = LimitUpdate(rx: DirectionUpdate(ops: .set(BucketConfig(size: 10, refillTimeNanoseconds: 1_000_000))))
            status = try await client.updateLimits(update, replace: true)
            #expect(status.limits.tx == .unlimited)
            #expect(status.limits.rx.ops == BucketConfig(size: 10, refillTimeNanoseconds: 1_000_000))
            let last = await backend.receivedUpdates.last
            #expect(last?.replace == true)
            #expect(last?.update == update)
        }
    }

    @Test func getVMLimits() async throws {
        try await withServer { _, _, client in
            let response = try await client.call("GET", "/vm/limits")
            let limits = try ControlJSON.decode(LimitsStatus.self, from: response.body)
            #expect(limits == .unlimited)
        }
    }

    @Test func malformedJSONIs400WithTheReason() async throws {
        try await withServer { _, backend, client in
            for (body, needle) in [(#"{"tx": {"bandwidth": "#, "malformed JSON: expected a value at line 1, column 22, found the end of the input"),
                                   ("{\"tx\"\n {}}", "malformed JSON: expected ':' at line 2, column 2, found '{'"),
                                   (#"{"tx": {'ops': 5}}"#, "malformed JSON: expected a string key at line 1, column 9, found '''"),
                                   (#"{"tx": 5}"#, "tx: expected an object"),
                                   (#"[1, 2]"#, "body: expected an object"),
                                   ("", "empty body")] {
                let error = await #expect(throws: ControlClientError.self) {
                    _ = try await client.call("PATCH", "/vm/limits", body: Array(body.utf8))
                }
                guard case .http(let status, let message) = error else {
                    Issue.record("expected an HTTP error for \(body), got \(String(describing: error))")
                    continue
                }
                #expect(status == 400)
                #expect(message.contains(needle), "\(message)")
            }
            #expect(await backend.receivedUpdates.isEmpty)
        }
    }

    @Test func badLimitIs400NamingTheField() async throws {
        try await withServer { _, backend, client in
            let cases: [(String, String)] = [
                (#"{"tx": {"bandwidth": "100Mb"}}"#, #"tx.bandwidth: cannot parse "100Mb" (ambiguous unit"#),
                (#"{"rx": {"ops": "ten"}}"#, #"rx.ops: cannot parse "ten""#),
                (#"{"rx": {"bandwidth_rate": "fast"}}"#, #"rx.bandwidth_rate: cannot parse "fast""#),
                (#"{"tx": {"bandwith": "1Gbit"}}"#, #"unknown key "bandwith""#),
                (#"{"rx": {"bandwidth": {"size": 1}}}"#, #"missing key "refill_time_ns""#),
                (#"{"rx": {"bandwidth": true}}"#, "rx.bandwidth: expected a string like"),
                (#"{"both": {}}"#, #"unknown key "both""#),
            ]
            for (body, needle) in cases {
                let response = try await client.http.request("PUT", "/vm/limits", body: Array(body.utf8))
                #expect(response.status == 400, "\(body)")
                let message = ControlClient.errorMessage(response)
                #expect(message.contains(needle), "\(body) -> \(message)")
                #expect(!message.contains("\n"))
            }
            #expect(await backend.receivedUpdates.isEmpty)
        }
    }

    @Test func portSecurityTurnsOnChangesAndOff() async throws {
        try await withServer { _, _, client in
            #expect(try await client.portSecurity() == PortSecurityStatus(mac: "52:54:00:12:34:56"))
            // allowed_ips alone turns it on; the prefixes come back in canonical form.
            let on = try await client.portSecurity(PortSecurityUpdate(allowedIPs: ["10.0.0.5", "2001:db8::/64"]))
            #expect(on == PortSecurityStatus(enabled: true, mac: "52:54:00:12:34:56", allowedIPs: ["10.0.0.5/32", "2001:db8::/64"]))
            // PATCH keeps what it does not name.
            let router = try await client.portSecurity(PortSecurityUpdate(allowRouter: true))
            #expect(router.enabled && router.allowRouter && router.allowedIPs == on.allowedIPs)
            // PUT replaces: what is not given is off or empty.
            let replaced = try await client.portSecurity(PortSecurityUpdate(enabled: true), replace: true)
            #expect(replaced == PortSecurityStatus(enabled: true, mac: "52:54:00:12:34:56"))
            #expect(try await client.portSecurity(PortSecurityUpdate(enabled: false)).enabled == false)
        }
    }

    @Test func badPortSecurityIs400NamingWhatIsWrong() async throws {
        try await withServer { _, backend, client in
            let cases: [(String, String)] = [
                (#"{"allowed_ips": ["10.0.0.300"]}"#, #"allowed_ips: '10.0.0.300' is not an IPv4 or IPv6 address"#),
                (#"{"allowed_ips": ["10.0.0.5/24"]}"#, "has bits set beyond its prefix"),
                (#"{"allowed_ip": []}"#, #"allowed_ip: unknown key; expected "enabled", "allowed_ips", "allow_router""#),
                (#"{"enabled": "yes"}"#, "enabled: expected true or false"),
                ("", "empty body: expected JSON like"),
            ]
            for (body, needle) in cases {
                let response = try await client.http.request("PATCH", "/vm/port-security", body: Array(body.utf8))
                #expect(response.status == 400, "\(body)")
                let message = ControlClient.errorMessage(response)
                #expect(message.contains(needle), "\(body) -> \(message)")
            }
            #expect(await backend.portSecurity == PortSecurityStatus(mac: "52:54:00:12:34:56"), "nothing changed")
        }
    }

    @Test func backendErrorsKeepTheirStatus() async throws {
        try await withServer { _, backend, client in
            await backend.setUpdateError(ControlAPIError.conflict("no frontend connected"))
            let body = Array(#"{"tx": {"ops": "1000"}}"#.utf8)
            var response = try await client.http.request("PATCH", "/vm/limits", body: body)
            #expect(response.status == 409)
            #expect(ControlClient.errorMessage(response) == "no frontend connected")

            struct Boom: Error {}
            await backend.setUpdateError(Boom())
            response = try await client.http.request("PATCH", "/vm/limits", body: body)
            #expect(response.status == 500)
        }
    }

    @Test func unknownPathIs404() async throws {
        try await withServer { _, _, client in
            for path in ["/", "/vms", "/vm/limit", "/metrics/x"] {
                let response = try await client.http.request("GET", path)
                #expect(response.status == 404, "\(path)")
                #expect(ControlClient.errorMessage(response).contains("no such endpoint"))
                #expect(response.header("Content-Type") == "application/json")
            }
            // Query strings and a trailing slash are ignored.
            #expect(try await client.http.request("GET", "/vm/?pretty=1").status == 200)
        }
    }

    @Test func wrongMethodIs405WithAllow() async throws {
        try await withServer { _, _, client in
            var response = try await client.http.request("POST", "/vm/limits", body: Array("{}".utf8))
            #expect(response.status == 405)
            #expect(response.header("Allow") == "GET, HEAD, PUT, PATCH")
            response = try await client.http.request("DELETE", "/metrics")
            #expect(response.status == 405)
            #expect(response.header("Allow") == "GET, HEAD")
            #expect(ControlClient.errorMessage(response).contains("DELETE is not allowed on /metrics"))
        }
    }

    @Test func headHasHeadersButNoBody() async throws {
        try await withServer { _, _, client in
            let get = try await client.http.request("GET", "/vm")
            let head = try await client.http.request("HEAD", "/vm")
            #expect(head.status == 200)
            #expect(head.body.isEmpty)
            #expect(head.header("Content-Length") == String(get.body.count))
        }
    }

    @Test func oversizedBodyIs413() async throws {
        try await withServer { _, backend, client in
            let padding = String(repeating: " ", count: 64 * 1024)
            let body = Array((#"{"tx": {"ops": "1000"}}"# + padding).utf8)
            let response = try await client.http.request("PATCH", "/vm/limits", body: body)
            #expect(response.status == 413)
            #expect(ControlClient.errorMessage(response).contains("65536"))
            #expect(await backend.receivedUpdates.isEmpty)
            // Exactly at the limit is fine.
            let fits = Array((#"{"tx": {"ops": "1000"}}"# + padding.dropFirst(23)).utf8)
            #expect(fits.count == 64 * 1024)
            #expect(try await client.http.request("PATCH", "/vm/limits", body: fits).status == 200)
        }
    }

    @Test func slowBackendIs503() async throws {
        try await withServer(backendTimeout: .milliseconds(200)) { _, backend, client in
            await backend.setStatusDelay(.seconds(10))
            let clock = ContinuousClock()
            let start = clock.now
            let response = try await client.http.request("GET", "/vm")
            #expect(response.status == 503)
            #expect(clock.now - start < .seconds(8), "answered long before the 10 s backend would have")
            #expect(ControlClient.errorMessage(response).contains("did not answer within 0.2 s"))
        }
    }

    @Test func shutdownRemovesTheSocketAndClientsGetOneLineErrors() async throws {
        let path = temporarySocketPath()
        let server = ControlServer(socketPath: path, backend: FakeBackend(), logger: quietLogger)
        try await server.start()
        #expect(server.isRunning)
        #expect(fileExists(path))
        // A second server on the same live socket refuses instead of stealing it.
        let second = ControlServer(socketPath: path, backend: FakeBackend(), logger: quietLogger)
        await #expect(throws: ControlServerError.self) { try await second.start() }
        #expect(try await client(path).health().status == "ok")
        await server.shutdown()
        #expect(!server.isRunning)
        #expect(!fileExists(path))
        await server.shutdown()  // idempotent

        let error = await #expect(throws: ControlClientError.self) { _ = try await client(path).status() }
        #expect(error == .transport(.noSuchSocket(path: path)))
        #expect(error?.description == "no such socket: \(path) (is tapwire running with --api-socket \(path)?)")
    }

    @Test func serverRestartsOverAStaleSocketFile() async throws {
        let path = temporarySocketPath()
        try makeStaleSocket(path)
        defer { _ = unlinkPath(path) }
        let client = ControlClient(socketPath: path, timeout: .seconds(1))
        let error = await #expect(throws: ControlClientError.self) { _ = try await client.status() }
        #expect(error == .transport(.connectionRefused(path: path)))

        let server = ControlServer(socketPath: path, backend: FakeBackend(), logger: quietLogger)
        try await server.start()
        #expect(try await client.status().name == "vm \"one\"")
        await server.shutdown()
        // Shutdown removed the file, so the stale-socket cleanup below has nothing to do.
        #expect(!fileExists(path))
    }

    @Test func silentPeerTimesOut() async throws {
        let path = temporarySocketPath()
        let listener = try listenWithoutAccepting(path)
        defer {
            closeFD(listener)
            _ = unlinkPath(path)
        }
        let client = ControlClient(socketPath: path, timeout: .milliseconds(300))
        let clock = ContinuousClock()
        let start = clock.now
        let error = await #expect(throws: ControlClientError.self) { _ = try await client.status() }
        #expect(error == .transport(.timedOut(path: path, seconds: 0.3)))
        #expect(clock.now - start >= .milliseconds(290))
        #expect(clock.now - start < .seconds(3))
    }

    @Test func expectContinueIsHonoured() async throws {
        try await withServer { server, backend, _ in
            let path = server.socketPath
            let (interim, final) = try await offPool {
                let fd = try connectRaw(path)
                defer { closeFD(fd) }
                let body = #"{"rx": {"ops": "500"}}"#
                let head = "PATCH /vm/limits HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nConnection: close\r\nContent-Length: \(body.utf8.count)\r\n\r\n"
                let interim = try sendAndReadUntilBlankLine(fd, head)
                return (interim, try sendAndReadToEOF(fd, body))
            }
            #expect(interim.hasPrefix("HTTP/1.1 100 Continue\r\n"))
            #expect(final.hasPrefix("HTTP/1.1 200 OK\r\n"))
            #expect(await backend.limits.rx.ops?.size == 8)
        }
    }

    @Test func keepAliveServesSeveralRequestsOnOneConnection() async throws {
        try await withServer { server, _, _ in
            let path = server.socketPath
            let reply = try await offPool {
                let fd = try connectRaw(path)
                defer { closeFD(fd) }
                let request = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /metrics.json HTTP/1.1\r\nHost: x\r\n\r\nGET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                return try sendAndReadToEOF(fd, request)
            }
            let statuses = reply.split(whereSeparator: \.isNewline).filter { $0.hasPrefix("HTTP/1.1 ") }
            #expect(statuses == ["HTTP/1.1 200 OK", "HTTP/1.1 200 OK", "HTTP/1.1 404 Not Found"], "\(reply)")
        }
    }
}
