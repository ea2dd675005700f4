// tapwirectl: inspect and control a running tapwire through its control API socket.
//
//   tapwirectl --api-socket /run/tapwire/vm0.api status
//   tapwirectl --api-socket /run/tapwire/vm0.api stats --watch --interval 1
//   tapwirectl --api-socket /run/tapwire/vm0.api limit --tx-bandwidth 50Mbit --rx-ops off
//
// --json prints the API's JSON for scripts. Errors are one line on stderr and exit 1
// (64 for a bad limit value).

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import ArgumentParser
import ControlAPI
import RateLimiter
import PortSecurity

struct Tapwirectl: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tapwirectl",
        abstract: "Inspect and control a running tapwire (vhost-user virtio-net backend) through its API socket.",
        discussion: """
            The socket is the one given to tapwire with --api-socket; it can also be set with \
            the TAPWIRE_API_SOCKET environment variable.
            """,
        version: TapwireVersion.current,
        subcommands: [Status.self, Stats.self, Limit.self, PortSecurityCommand.self],
        defaultSubcommand: Status.self)

    @OptionGroup var global: GlobalOptions
}

struct GlobalOptions: ParsableArguments {
    @Option(name: .customLong("api-socket"),
            help: ArgumentHelp("tapwire's control API socket (default: $TAPWIRE_API_SOCKET).", valueName: "path"))
    var apiSocket: String?

    @Flag(help: "Print the API's JSON instead of a summary (for scripts).")
    var json = false

    @Option(help: ArgumentHelp("How long to wait for tapwire to answer.", valueName: "seconds"))
    var timeout: Double = 5

    func validate() throws {
        guard timeout > 0, timeout <= 86400 else { throw ValidationError("--timeout must be between 0 and 86400 seconds") }
    }

    /// The client, or a one-line error and exit 64 when no socket was given.
    func client() throws -> ControlClient {
        let path: String
        if let apiSocket, !apiSocket.isEmpty {
            path = apiSocket
        } else if let env = getenv("TAPWIRE_API_SOCKET"), let value = String(validatingCString: env), !value.isEmpty {
            path = value
        } else {
            fail("no API socket: give --api-socket PATH (the path tapwire was started with) or set TAPWIRE_API_SOCKET",
                 code: .validationFailure)
        }
        return ControlClient(socketPath: path, timeout: .milliseconds(Int64(timeout * 1000)))
    }
}

// MARK: - Output helpers

/// Prints "tapwirectl: message" on stderr and exits.
func fail(_ message: String, code: ExitCode = .failure) -> Never {
    var line = "tapwirectl: " + message.split(whereSeparator: \.isNewline).joined(separator: " ") + "\n"
    line.withUTF8 { buffer in
        var offset = 0
        while offset < buffer.count {
            let n = write(STDERR_FILENO, buffer.baseAddress! + offset, buffer.count - offset)
            if n <= 0 { break }
            offset += n
        }
    }
    exit(code.rawValue)
}

/// Runs an API call, turning any failure into one line on stderr.
func api<T>(_ body: () async throws(ControlClientError) -> T) async -> T {
    do {
        return try await body()
    } catch {
        fail(error.description)
    }
}

func printJSON<T: Encodable>(_ value: T) {
    do {
        print(String(decoding: try ControlJSON.encode(value), as: UTF8.self), terminator: "")
    } catch {
        fail("cannot encode JSON: \(error)")
    }
}

func hex(_ value: UInt64) -> String {
    let digits = String(value, radix: 16)
    return "0x" + String(repeating: "0", count: max(0, 16 - digits.count)) + digits
}

func duration(_ seconds: Double) -> String {
    guard seconds >= 0, seconds < 1e12 else { return "?" }
    var s = Int(seconds)
    let d = s / 86400; s %= 86400
    let h = s / 3600; s %= 3600
    let m = s / 60; s %= 60
    if d > 0 { return "\(d)d \(h)h \(m)m" }
    if h > 0 { return "\(h)h \(m)m \(s)s" }
    if m > 0 { return "\(m)m \(s)s" }
    return LimitFormatter.number(seconds, fractionDigits: 1) + "s"
}

/// Left-aligned first column, right-aligned others.
func table(_ rows: [[String]]) -> String {
    guard let first = rows.first else { return "" }
    var widths = [Int](repeating: 0, count: first.count)
    for row in rows { for (i, cell) in row.enumerated() where i < widths.count { widths[i] = max(widths[i], cell.count) } }
    return rows.map { row in
        row.enumerated().map { i, cell in
            let pad = String(repeating: " ", count: widths[i] - cell.count)
            return i == 0 ? cell + pad : pad + cell
        }.joined(separator: "  ")
    }.joined(separator: "\n")
}

// MARK: - status

struct Status: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show the VM's state, negotiated features, queues and limits.")

    @OptionGroup var global: GlobalOptions

    func run() async throws {
        let client = try global.client()
        let status = await api { () async throws(ControlClientError) in try await client.status() }
        if global.json {
            printJSON(status)
            return
        }
        print(Self.render(status))
    }

    static func render(_ s: VMStatus) -> String {
        var lines = ["\(s.name): \(s.state.rawValue), up \(duration(s.uptimeSeconds))"]
        func field(_ name: String, _ value: String) {
            lines.append("  " + (name + ":").padding(12) + value)
        }
        field("tap", "\(s.tap)  mac \(s.mac)  mtu \(s.mtu)")
        field("vhost-user", s.socketPath)
        field("features", hex(s.negotiatedFeaturesRaw) + (s.negotiatedFeatures.isEmpty ? "" : " " + s.negotiatedFeatures.joined(separator: " ")))
        field("protocol", hex(s.protocolFeaturesRaw))
        field("offloads", "offered " + list(s.offloadsOffered) + "; acked " + list(s.offloadsAcked))
        field("queues", "\(s.queuePairsEnabled) of \(s.queuePairsConfigured) pair\(s.queuePairsConfigured == 1 ? "" : "s") enabled")
        for q in s.queues.sorted(by: { $0.index < $1.index }) {
            var line = "    \(q.direction.rawValue) \(q.index)".padding(10) + "size \(q.size)".padding(10)
                + (q.enabled ? "enabled " : "disabled") + "  " + (q.running ? "running" : "stopped")
            if let fault = q.fault { line += "  fault: \(fault)" }
            lines.append(line)
        }
        field("limits", "tx: " + s.limits.txHuman)
        lines.append(String(repeating: " ", count: 14) + "rx: " + s.limits.rxHuman)
        field("port security", s.portSecurity.summary)
        return lines.joined(separator: "\n")
    }

    static func list(_ items: [String]) -> String { items.isEmpty ? "none" : items.joined(separator: ",") }
}

extension String {
    func padding(_ width: Int) -> String {
        count >= width ? self + " " : self + String(repeating: " ", count: width - count)
    }
}

// MARK: - stats

struct Stats: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show per-queue counters; with --watch, redraw with rates until Ctrl-C.")

    @OptionGroup var global: GlobalOptions

    @Flag(help: "Redraw every --interval seconds with rates (frames/s, Mbit/s), until Ctrl-C.")
    var watch = false

    @Option(help: ArgumentHelp("Seconds between snapshots with --watch.", valueName: "seconds"))
    var interval: Double = 1

    @Option(help: ArgumentHelp("With --watch, stop after this many snapshots.", valueName: "n"))
    var count: Int?

    func validate() throws {
        guard interval >= 0.05, interval <= 86400 else { throw ValidationError("--interval must be between 0.05 and 86400 seconds") }
        if let count, count < 1 { throw ValidationError("--count must be at least 1") }
        if !watch, count != nil { throw ValidationError("--count needs --watch") }
    }

    func run() async throws {
        let client = try global.client()
        guard watch else {
            let metrics = await api { () async throws(ControlClientError) in try await client.metrics() }
            if global.json { printJSON(metrics) } else { print(Self.render(metrics, previous: nil)) }
            return
        }
        let clear = isatty(STDOUT_FILENO) == 1 && !global.json
        var previous: MetricsSnapshot?
        var taken = 0
        while true {
            let metrics = await api { () async throws(ControlClientError) in try await client.metrics() }
            taken += 1
            if global.json {
                printJSON(metrics)
            } else {
                if clear { print("\u{1B}[H\u{1B}[2J", terminator: "") } else if taken > 1 { print("") }
                print(Self.render(metrics, previous: previous))
            }
            fflush(nil)
            previous = metrics
            if let count, taken >= count { return }
            try await Task.sleep(for: .milliseconds(Int64(interval * 1000)))
        }
    }

    /// The table; with `previous`, rate columns from the difference.
    static func render(_ m: MetricsSnapshot, previous: MetricsSnapshot?) -> String {
        var header = ["QUEUE", "FRAMES", "BYTES", "DROPS", "KICKS", "IRQS", "HELD", "THROTTLED", "WAITED"]
        let elapsed = previous.map { m.uptimeSeconds - $0.uptimeSeconds } ?? 0
        let withRates = previous != nil
        if withRates { header.insert(contentsOf: ["FRAMES/S", "MBIT/S", "DROPS/S"], at: 3) }
        var rows = [header]
        let queues = m.queues.sorted { ($0.index, $0.direction.rawValue) < ($1.index, $1.direction.rawValue) }
        for q in queues {
            var row = ["\(q.direction.rawValue) \(q.index)", String(q.frames), LimitFormatter.bytes(q.bytes),
                       String(q.totalDrops), String(q.kicks), String(q.interrupts), String(q.interruptsHeld), String(q.throttledEvents),
                       LimitFormatter.number(Double(q.throttledNanoseconds) / 1e9, fractionDigits: 3) + "s"]
            if withRates {
                let old = previous?.queues.first { $0.index == q.index && $0.direction == q.direction }
                func rate(_ now: UInt64, _ before: UInt64?) -> Double? {
                    // A counter that went backwards means tapwire restarted: no rate.
                    guard elapsed > 0, let before, now >= before else { return nil }
                    return Double(now - before) / elapsed
                }
                let frames = rate(q.frames, old?.frames)
                let bytes = rate(q.bytes, old?.bytes)
                let drops = rate(q.totalDrops, old?.totalDrops)
                row.insert(contentsOf: [
                    frames.map { LimitFormatter.number($0, fractionDigits: 1) } ?? "-",
                    bytes.map { LimitFormatter.number($0 * 8 / 1e6, fractionDigits: 2) } ?? "-",
                    drops.map { LimitFormatter.number($0, fractionDigits: 1) } ?? "-",
                ], at: 3)
            }
            rows.append(row)
        }
        var lines = [table(rows)]
        for q in queues where !q.drops.isEmpty && q.totalDrops > 0 {
            let reasons = q.drops.filter { $0.value > 0 }.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }
            lines.append("drops \(q.direction.rawValue) \(q.index): " + reasons.joined(separator: ", "))
        }
        var footer = "connections \(m.connectionsTotal), disconnects \(m.disconnects), up \(duration(m.uptimeSeconds))"
        if withRates { footer += ", rates over " + LimitFormatter.number(elapsed, fractionDigits: 2) + "s" }
        lines.append(footer)
        return lines.joined(separator: "\n")
    }
}

// MARK: - limit

struct Limit: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Change the rate limits of the running VM (only the given ones), or show them.",
        discussion: """
            Same syntax as tapwire's own flags; "off" removes a limit:
              --tx-bandwidth RATE[,burst=SIZE][,one-time-burst=SIZE]   e.g. 100Mbit, 1Gbit,burst=1MiB, 10MB
              --tx-ops N[,burst=N][,one-time-burst=N]                  e.g. 10000, 2.5k,burst=64
            tx is what the guest transmits, rx what it receives. Without any limit flag, \
            prints the limits in force.
            """)

    @OptionGroup var global: GlobalOptions

    @Option(name: .customLong("tx-bandwidth"), help: ArgumentHelp("Guest transmit bandwidth.", valueName: "rate[,burst=size][,one-time-burst=size]|off"))
    var txBandwidth: String?
    @Option(name: .customLong("rx-bandwidth"), help: ArgumentHelp("Guest receive bandwidth.", valueName: "rate[,burst=size][,one-time-burst=size]|off"))
    var rxBandwidth: String?
    @Option(name: .customLong("tx-ops"), help: ArgumentHelp("Guest transmit frames per second.", valueName: "n[,burst=n][,one-time-burst=n]|off"))
    var txOps: String?
    @Option(name: .customLong("rx-ops"), help: ArgumentHelp("Guest receive frames per second.", valueName: "n[,burst=n][,one-time-burst=n]|off"))
    var rxOps: String?

    @Flag(help: "Replace all limits (PUT): any limit not given is removed. Default: change only the given ones (PATCH).")
    var replace = false

    func run() async throws {
        // Validate locally first: a typo fails here, with the parser's message.
        let update: LimitUpdate
        do {
            update = LimitUpdate(
                tx: try direction(bandwidth: txBandwidth, ops: txOps,
                                  bandwidthFlag: LimitParser.txBandwidthFlag, opsFlag: LimitParser.txOpsFlag),
                rx: try direction(bandwidth: rxBandwidth, ops: rxOps,
                                  bandwidthFlag: LimitParser.rxBandwidthFlag, opsFlag: LimitParser.rxOpsFlag))
        } catch {
            fail(error.description, code: .validationFailure)
        }
        let client = try global.client()
        let status: VMStatus
        if update.tx == nil, update.rx == nil, !replace {
            status = await api { () async throws(ControlClientError) in try await client.status() }
        } else {
            status = await api { () async throws(ControlClientError) in try await client.updateLimits(update, replace: replace) }
        }
        if global.json {
            printJSON(status.limits)
        } else {
            print("tx: " + status.limits.txHuman)
            print("rx: " + status.limits.rxHuman)
        }
    }

    private func direction(bandwidth: String?, ops: String?, bandwidthFlag: String,
                           opsFlag: String) throws(LimitParseError) -> DirectionUpdate? {
        guard bandwidth != nil || ops != nil else { return nil }
        return try DirectionUpdate.parse(bandwidth: bandwidth, ops: ops, bandwidthFlag: bandwidthFlag, opsFlag: opsFlag)
    }
}

// MARK: - port-security

struct PortSecurityCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "port-security",
        abstract: "Turn the VM's port security on or off, change what it may send from, or show it.",
        discussion: """
            With port security on, the guest sends only from tapwire's --mac and the allowed \
            IPs (plus DHCP and its MAC's IPv6 link-local address), sends no DHCP server \
            replies or router advertisements unless --allow-router is on, and receives no \
            unicast for another MAC. Without options, prints what is in force.
              tapwirectl port-security --allowed-ips 10.0.0.5/32,2001:db8::5   (turns it on)
              tapwirectl port-security --off
            """)

    @OptionGroup var global: GlobalOptions

    @Flag(name: .customLong("on"), help: "Turn port security on.")
    var on = false
    @Flag(name: .customLong("off"), help: "Turn port security off: every frame passes.")
    var off = false
    @Option(name: .customLong("allowed-ips"), help: ArgumentHelp("The sources the guest may use (\"\" for none); turns it on.", valueName: "cidr[,cidr...]"))
    var allowedIPs: String?
    @Option(name: .customLong("allow-router"), help: ArgumentHelp("Let the guest send DHCP server replies and router advertisements.", valueName: "on|off"))
    var allowRouter: Switch?

    enum Switch: String, ExpressibleByArgument { case on, off }

    func validate() throws {
        if on && off { throw ValidationError("give --on or --off, not both") }
        if let allowedIPs {
            do { _ = try IPNetwork.parseList(allowedIPs) } catch { throw ValidationError("--allowed-ips \(error)") }
        }
    }

    func run() async throws {
        let client = try global.client()
        var update: PortSecurityUpdate?
        if on || off || allowedIPs != nil || allowRouter != nil {
            update = PortSecurityUpdate(enabled: on ? true : off ? false : nil,
                                        allowedIPs: try allowedIPs.map { try IPNetwork.parseList($0).map(\.description) },
                                        allowRouter: allowRouter.map { $0 == .on })
        }
        let status = await api { () async throws(ControlClientError) in try await client.portSecurity(update) }
        if global.json {
            printJSON(status)
        } else {
            print(status.summary)
        }
    }
}

// main.swift cannot use @main, and in top-level code `Tapwirectl.main()` and `run()`
// resolve to the synchronous overloads (which refuse async commands / print help), so
// do what ArgumentParser's async entry point does, inside a real async function.
func runTapwirectl() async {
    do {
        var command = try Tapwirectl.parseAsRoot()
        if var asyncCommand = command as? any AsyncParsableCommand {
            try await asyncCommand.run()
        } else {
            try command.run()
        }
    } catch {
        Tapwirectl.exit(withError: error)
    }
}

await runTapwirectl()
