import Glibc
import ArgumentParser
import Logging
import SystemCalls
import ControlAPI
import TapDevice
import VirtioNet
import RateLimiter
import PortSecurity

/// `tapwire`: one vhost-user net backend per VM. Follows the "Backend program conventions" of
/// QEMU's vhost-user spec: --socket-path, --fd, --print-capabilities, no daemonizing.
public struct TapwireCommand: ParsableCommand {
    /// `--sched-slice-us`: the default, chosen with Tools/latency-guest.sh (a wake-up no
    /// longer waits behind a TCG vCPU's 1.4 ms slice), and the range the kernel accepts.
    static let defaultSchedulerSliceMicroseconds = 100
    static let schedulerSliceRange = 100...100_000
    public static let configuration = CommandConfiguration(
        commandName: "tapwire",
        abstract: "A vhost-user virtio-net backend that moves a VM's frames to a host TAP device.",
        discussion: """
        Example:
          tapwire --socket-path /run/tapwire/vm1.sock --tap vm1tap
          qemu-system-x86_64 ... -object memory-backend-memfd,id=mem,size=1G,share=on -machine memory-backend=mem \\
            -chardev socket,id=c0,path=/run/tapwire/vm1.sock -netdev vhost-user,id=n0,chardev=c0 \\
            -device virtio-net-pci,netdev=n0
        Every option can also come from --config FILE (JSON: {"tap": "vm1tap", "tx-bandwidth": "100Mbit"});
        options on the command line win.
        Under systemd socket activation (LISTEN_FDS=1 for this process) the inherited socket is used
        when neither --socket-path nor --fd is given.
        """,
        version: TapwireVersion.current)

    public init() {}

    @Option(name: .long, help: "Listen for the frontend on this unix socket path (or, with --client, connect to it).")
    var socketPath: String?

    @Option(name: .long, help: "Use an inherited, already listening unix socket.")
    var fd: Int32?

    @Flag(name: .long, help: "Connect to a socket the frontend listens on (QEMU server=on), retrying with back-off.")
    var client = false

    @Flag(name: .long, help: "Print the backend's capabilities as JSON and exit.")
    var printCapabilities = false

    @Option(name: .long, help: "TAP interface to create or attach to (IFF_TAP|IFF_NO_PI|IFF_VNET_HDR).")
    var tap: String?

    @Flag(name: .long, help: "Consume and drop guest transmit without a TAP (measures the ring core alone).")
    var sink = false

    @Option(name: .long, help: "Queue pairs to offer (VIRTIO_NET_F_MQ when > 1; one TAP queue each).")
    var queues: Int = 1

    @Option(name: .long, help: "Offloads to offer: auto (all the TAP supports), none, or a list such as csum,tso4,tso6,guest-csum,guest-tso4,guest-tso6,mrg-rxbuf.")
    var offloads: String = "auto"

    @Option(name: .long, help: "MAC address offered in the device config (VIRTIO_NET_F_MAC), e.g. 52:54:00:12:34:56.")
    var mac: String?

    @Flag(name: .long, help: "Port security: the guest may send only from --mac and --allowed-ips (plus DHCP and its MAC's IPv6 link-local address), no DHCP server replies or router advertisements, and receives no unicast for another MAC. Off unless given (--allowed-ips implies it).")
    var portSecurity = false

    @Option(name: .long, help: "With port security, the IPv4/IPv6 source addresses the guest may use, e.g. 10.0.0.5/32,2001:db8::5/128 (implies --port-security).")
    var allowedIps: String?

    @Flag(name: .long, help: "With port security, let the guest send DHCP/DHCPv6 server replies and IPv6 router advertisements (a VM that is a router).")
    var allowRouter = false

    @Option(name: .long, help: "Make the TAP a port of this Linux bridge (before capabilities are dropped).")
    var bridge: String?

    @Option(name: .long, help: "With --bridge, an access port on this VLAN (1-4094): the guest's frames carry tag ID on the bridge and arrive untagged; the bridge gets VLAN filtering.")
    var vlan: Int?

    @Option(name: .long, help: "MTU offered to the guest (VIRTIO_NET_F_MTU); also set on the TAP.")
    var mtu: Int?

    @Option(name: .long, help: ArgumentHelp("After a guest transmit burst, poll again after this many microseconds before asking for kicks (0: ask at once; auto: only while the guest streams, so a lone request gets its kick back at once).", valueName: "microseconds|auto"))
    var txPoll: HoldSetting = .auto

    @Option(name: .long, help: "Keep polling the rings and the TAP for this many microseconds after any traffic instead of sleeping, with guest kicks off (0: event-driven). Lowers latency at the cost of CPU.")
    var busyPoll: Int = 0

    @Option(name: .long, help: ArgumentHelp("While data streams to the guest, space its receive interrupts at least this many microseconds apart (0: interrupt at once; auto: \(HoldSetting.autoCoalesceMicroseconds)). Sparse traffic is never delayed.", valueName: "microseconds|auto"))
    var rxCoalesceUsecs: HoldSetting = .auto

    @Option(name: .long, help: ArgumentHelp("Let a transmit-completion interrupt wait up to this many microseconds for the next receive interrupt, which carries it, while receive interrupts flow (0: interrupt at once; auto: \(HoldSetting.autoCoalesceMicroseconds)).", valueName: "microseconds|auto"))
    var txCoalesceUsecs: HoldSetting = .auto

    @Option(name: .long, help: ArgumentHelp("Ask the kernel's scheduler for time slices this short for tapwire's threads, so that a wake-up for a frame preempts a busy thread (such as a TCG vCPU) instead of waiting for its slice to end (EEVDF, Linux 6.12+; older kernels ignore it; 0: the kernel's default).", valueName: "microseconds"))
    var schedSliceUs: Int = TapwireCommand.defaultSchedulerSliceMicroseconds

    @Option(name: .long, help: "How frames go to and from the TAP: io-uring (a batch of frames per syscall), writev (one readv/writev per frame), or auto (io-uring where the kernel allows it).")
    var tapIo: TapIOMode = .auto

    @Option(name: .long, help: "Guest transmit bandwidth: RATE[,burst=SIZE][,one-time-burst=SIZE], e.g. 100Mbit.")
    var txBandwidth: String?
    @Option(name: .long, help: "Guest receive bandwidth, same form as --tx-bandwidth.")
    var rxBandwidth: String?
    @Option(name: .long, help: "Guest transmit frames per second: N[,burst=N][,one-time-burst=N].")
    var txOps: String?
    @Option(name: .long, help: "Guest receive frames per second, same form as --tx-ops.")
    var rxOps: String?

    @Option(name: .long, help: "Serve the control API (HTTP/1.1, JSON) on this unix socket.")
    var apiSocket: String?

    @Option(name: .long, help: "Name of this VM in log lines and the API.")
    var name: String = "vm"

    @Option(name: .long, help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: String = "info"

    @Option(name: .long, help: "After start-up switch to USER[:GROUP] (capabilities are dropped either way).")
    var user: String?

    @Flag(name: .long, help: "Keep capabilities (for debugging only).")
    var keepCapabilities = false

    @Option(name: .long, help: "Once serving, a system call outside tapwire's allow-list: kill (the process dies with SIGSYS), log (allowed and logged by the kernel, see dmesg; for debugging), or off.")
    var seccomp: SeccompMode = .kill

    @Option(name: .long, help: "Read options from a JSON file; command-line options override it.")
    var config: String?

    public mutating func validate() throws {
        let endpoints = [socketPath != nil, fd != nil].filter { $0 }.count
        if !printCapabilities {
            guard endpoints == 1 || (endpoints == 0 && SocketActivation.listener != nil) else {
                throw ValidationError("give exactly one of --socket-path PATH or --fd N (or start under socket activation)")
            }
            guard tap != nil || sink else { throw ValidationError("give --tap NAME (or --sink to drop guest transmit)") }
        }
        if client && socketPath == nil { throw ValidationError("--client needs --socket-path (the frontend's socket)") }
        guard (1...128).contains(queues) else { throw ValidationError("--queues must be between 1 and 128, not \(queues)") }
        guard schedSliceUs == 0 || TapwireCommand.schedulerSliceRange.contains(schedSliceUs) else {
            throw ValidationError("--sched-slice-us must be 0 or between \(TapwireCommand.schedulerSliceRange.lowerBound) and \(TapwireCommand.schedulerSliceRange.upperBound) microseconds, not \(schedSliceUs)")
        }
        guard (0...1_000_000).contains(busyPoll) else { throw ValidationError("--busy-poll must be between 0 and 1000000 microseconds, not \(busyPoll)") }
        for (flag, setting) in [("--tx-poll", txPoll), ("--rx-coalesce-usecs", rxCoalesceUsecs), ("--tx-coalesce-usecs", txCoalesceUsecs)] {
            if case .microseconds(let value) = setting, !HoldSetting.range.contains(value) {
                throw ValidationError("\(flag) must be auto or between 0 and \(HoldSetting.range.upperBound) microseconds, not \(value)")
            }
        }
        if let mtu, !(68...65535).contains(mtu) { throw ValidationError("--mtu must be between 68 and 65535, not \(mtu)") }
        if let mac, MACAddress.parse(mac) == nil { throw ValidationError("--mac '\(mac)' is not six hex bytes separated by ':'") }
        if let vlan {
            guard bridge != nil else { throw ValidationError("--vlan needs --bridge (the bridge whose VLAN the TAP joins)") }
            guard (1...4094).contains(vlan) else { throw ValidationError("--vlan must be between 1 and 4094, not \(vlan)") }
        }
        _ = try portPolicy()
        if bridge != nil && (tap == nil || sink) { throw ValidationError("--bridge needs --tap (the TAP it makes a port)") }
        if case .failure(let error) = Offload.parse(offloads) { throw ValidationError("\(error)") }
        if Logger.Level(rawValue: logLevel.lowercased()) == nil {
            throw ValidationError("--log-level '\(logLevel)': expected trace, debug, info, notice, warning, error or critical")
        }
        _ = try limits()
    }

    /// `--port-security`, `--allowed-ips`, `--allow-router` (nil: port security off).
    func portPolicy() throws -> PortPolicy? {
        guard portSecurity || allowedIps != nil else {
            if allowRouter { throw ValidationError("--allow-router needs --port-security or --allowed-ips") }
            return nil
        }
        guard let mac, let address = MACAddress.parse(mac) else {
            throw ValidationError("port security needs --mac (the only source MAC the guest may use)")
        }
        guard address[0] & 1 == 0 else { throw ValidationError("--mac \(mac) is a multicast address; a VM's MAC is unicast") }
        do {
            return PortPolicy(mac: address, allowedIPs: try IPNetwork.parseList(allowedIps ?? ""), allowRouter: allowRouter)
        } catch {
            throw ValidationError("--allowed-ips \(error)")
        }
    }

    func limits() throws -> (tx: DirectionLimits, rx: DirectionLimits) {
        func parse(_ text: String?, flag: String, ops: Bool) throws -> BucketConfig? {
            guard let text else { return nil }
            do {
                return ops ? try LimitParser.ops(text, flag: flag) : try LimitParser.bandwidth(text, flag: flag)
            } catch {
                throw ValidationError("\(error)")
            }
        }
        let tx = DirectionLimits(bandwidth: try parse(txBandwidth, flag: "--tx-bandwidth", ops: false),
                                 ops: try parse(txOps, flag: "--tx-ops", ops: true))
        let rx = DirectionLimits(bandwidth: try parse(rxBandwidth, flag: "--rx-bandwidth", ops: false),
                                 ops: try parse(rxOps, flag: "--rx-ops", ops: true))
        return (tx, rx)
    }

    public func run() throws {
        if printCapabilities {
            print(Self.capabilitiesJSON)
            return
        }
        // Log timestamps are local time. With TZ unset glibc stats /etc/localtime at every
        // timestamp, which the seccomp filter forbids; named once, the zone is read once.
        if getenv("TZ") == nil {
            setenv("TZ", ":/etc/localtime", 1)
            tzset()
        }
        let level = Logger.Level(rawValue: logLevel.lowercased()) ?? .info
        let vmName = name
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        var logger = Logger(label: "tapwire[\(vmName)]")
        logger.logLevel = level
        do {
            try Daemon(command: self, logger: logger).run()
        } catch {
            logger.critical("\(error)")
            throw ExitCode.failure
        }
    }

    static let capabilitiesJSON = """
    {
      "type": "net",
      "features": ["offloads", "mergeable-rx-buffers", "multiqueue", "rate-limiting", "reconnect", "client-mode", "control-api", "live-migration", "port-security"]
    }
    """

    var frontendEndpoint: FrontendEndpoint {
        if let fd { return .inheritedListener(fd: fd) }
        // A socket unit's socket wins over a "socket-path" left in the config file.
        if !client, let activated = SocketActivation.listener { return .inheritedListener(fd: activated) }
        return client ? .connect(path: socketPath!) : .listen(path: socketPath!)
    }

    var deviceConfig: NetDeviceConfig {
        get throws {
            let (tx, rx) = try limits()
            let offered: Offload?
            switch Offload.parse(offloads) {
            case .success(let o): offered = o
            case .failure(let e): throw ValidationError("\(e)")
            }
            return NetDeviceConfig(queuePairs: queues, offloads: offered, mac: mac.flatMap(MACAddress.parse), mtu: mtu,
                                   txLimits: tx, rxLimits: rx, transmitPollMicroseconds: txPoll.fixedMicroseconds, busyPollMicroseconds: busyPoll,
                                   interruptModeration: InterruptModeration(
                                       receiveHoldoffMicroseconds: rxCoalesceUsecs.fixedMicroseconds ?? HoldSetting.autoCoalesceMicroseconds,
                                       transmitHoldoffMicroseconds: txCoalesceUsecs.fixedMicroseconds ?? HoldSetting.autoCoalesceMicroseconds),
                                   portPolicy: try portPolicy())
        }
    }
}

/// `--tx-poll`, `--rx-coalesce-usecs`, `--tx-coalesce-usecs`: `auto` (the default) or a fixed
/// number of microseconds (0: off).
enum HoldSetting: ExpressibleByArgument, Equatable {
    case auto
    case microseconds(Int)

    static let range = 0...100_000
    /// What `auto` means for the interrupt holds: they are adaptive already (receive holds
    /// only at a bulk rate, transmit only rides on receive interrupts that flow anyway).
    static let autoCoalesceMicroseconds = NetDeviceConfig.defaultHoldoffMicroseconds

    init?(argument: String) {
        if argument == "auto" { self = .auto; return }
        guard let value = Int(argument) else { return nil }
        self = .microseconds(value)
    }

    var defaultValueDescription: String {
        switch self {
        case .auto: "auto"
        case .microseconds(let value): "\(value)"
        }
    }

    /// nil for auto.
    var fixedMicroseconds: Int? {
        if case .microseconds(let value) = self { return value }
        return nil
    }
}

/// `--tap-io`: how transmit batches reach the TAP.
enum TapIOMode: String, ExpressibleByArgument, CaseIterable {
    case auto
    case ioUring = "io-uring"
    case writev
}



/// systemd's socket activation protocol (sd_listen_fds(3)): the listening socket is fd 3 when
/// LISTEN_PID names this process and LISTEN_FDS is 1. Read once; the variables are then removed
/// so that nothing tapwire starts believes the socket is its own.
enum SocketActivation {
    static let firstDescriptor: Int32 = 3

    static let listener: Int32? = {
        defer {
            unsetenv("LISTEN_PID")
            unsetenv("LISTEN_FDS")
            unsetenv("LISTEN_FDNAMES")
        }
        guard let pid = getenv("LISTEN_PID").flatMap({ pid_t(String(cString: $0)) }), pid == getpid(),
              let count = getenv("LISTEN_FDS").flatMap({ Int(String(cString: $0)) }), count == 1
        else { return nil }
        // Not passed on to anything tapwire executes.
        _ = fcntl(firstDescriptor, F_SETFD, FD_CLOEXEC)
        return firstDescriptor
    }()
}
