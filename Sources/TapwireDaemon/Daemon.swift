import Glibc
import Logging
import SystemCalls
import TapDevice
import VirtioNet

/// Start-up order matters: open everything that needs privileges (TAP, sockets), then drop
/// every capability, then serve.
struct Daemon {
    let command: TapwireCommand
    let logger: Logger

    func run() throws {
        let config = try command.deviceConfig
        requestSchedulerSlice()
        var tap: Tap?
        if !command.sink, let name = command.tap {
            let opened = try Tap(name: name, queueCount: config.queuePairs)
            if let mtu = config.mtu { try opened.setMTU(mtu) }
            do { try opened.setUp() } catch { logger.warning("\(error) (bring it up yourself)") }
            try enableBatchedIO(opened)
            logger.info("TAP \(opened.name) ready with \(opened.queues.count) queue(s), frames in \(opened.ioRings.isEmpty ? "one readv/writev each" : "io_uring batches")")
            if let bridge = command.bridge { try attach(opened, to: bridge) }
            tap = opened
        } else {
            logger.info("sink mode: guest transmit is dropped, nothing is received")
        }
        let device = NetDevice(config: config, tap: tap, logger: logger, now: monotonicNanoseconds())
        logger.info("offering offloads: \(device.availableOffloads.names.joined(separator: ","))")
        if config.portPolicy != nil { logger.info("port security \(device.portSecurityStatus.summary)") }
        let endpoint = command.frontendEndpoint
        if case .inheritedListener = endpoint, command.fd == nil, let path = command.socketPath {
            logger.notice("socket activation: serving the inherited socket, not --socket-path \(path)")
        }
        let loop = try BackendLoop(device: device, endpoint: endpoint, logger: logger)
        try loop.handleTerminationSignals()
        try loop.prepare()
        let control = try ControlPlane.start(command: command, loop: loop, logger: logger)
        if !command.keepCapabilities {
            let identity = try command.user.map { spec throws(PrivilegeError) in try Privileges.resolve(spec) }
            try Privileges.dropAll(switchingTo: identity)
            logger.info("capabilities dropped (\(Privileges.processStatus(["CapEff", "CapBnd"])))\(command.user.map { ", running as \($0)" } ?? "")")
        }
        try Sandbox.limitResources(queuePairs: config.queuePairs)
        try Sandbox.installFilter(mode: command.seccomp)
        logger.info("sandboxed: seccomp \(command.seccomp.rawValue) (\(Privileges.processStatus(["NoNewPrivs", "Seccomp"])))")
        try loop.run()
        control?.stop()
        logger.info("stopped")
    }

    /// `--bridge BR [--vlan ID]`: the TAP becomes a port of BR now, while tapwire still holds
    /// CAP_NET_ADMIN (netlink is neither possible nor allowed by the sandbox later).
    private func attach(_ tap: Tap, to bridge: String) throws {
        let mac = command.mac.flatMap(MACAddress.parse)
        let port: BridgePort
        do {
            port = try BridgePort.attach(tap: tap.name, bridge: bridge, vlan: command.vlan, mac: mac)
        } catch {
            switch error {
            case .noSuchInterface(let name) where name == bridge: throw BridgeFailure(description: "--bridge \(bridge): no such interface")
            case .vlanFilteringUnsupported: throw BridgeFailure(description: "--vlan \(command.vlan ?? 0): \(error)")
            default: throw BridgeFailure(description: "--bridge \(bridge): \(error)")
            }
        }
        if port.enabledVLANFiltering { logger.notice("turned VLAN filtering on for bridge \(bridge) (its other ports stay on their VLANs, by default 1)") }
        var details = [String]()
        if let vlan = port.vlan { details.append("access VLAN \(vlan)") }
        if let mac = port.mac { details += ["static FDB \(MACAddress.format(mac))", "learning and unicast flood off"] }
        let summary = details.isEmpty ? "" : " (\(details.joined(separator: ", ")))"
        if port.tapIsPersistent {
            logger.info("TAP \(tap.name) is a port of \(bridge)\(summary)")
            logger.notice("\(port.exitBehaviour)")
        } else {
            logger.info("TAP \(tap.name) is a port of \(bridge)\(summary); \(port.exitBehaviour)")
        }
        if mac == nil {
            logger.notice("no --mac: learning and unicast flood left as they are on port \(tap.name), so unknown unicast for other MACs on \(bridge) still reaches this guest")
        }
    }

    /// `--sched-slice-us`: first, so that every thread tapwire starts inherits it.
    private func requestSchedulerSlice() {
        guard command.schedSliceUs > 0 else { return }
        do {
            try Scheduler.requestSlice(microseconds: command.schedSliceUs)
            logger.info("scheduler slice \(command.schedSliceUs) µs requested (EEVDF kernels, Linux 6.12+, honour it)")
        } catch {
            logger.notice("--sched-slice-us \(command.schedSliceUs): \(error); the kernel's default slice stays")
        }
    }

    /// `--tap-io`: io_uring when asked (failing if it cannot be had) or when available (auto).
    private func enableBatchedIO(_ tap: Tap) throws {
        switch command.tapIo {
        case .writev:
            return
        case .ioUring:
            do { try tap.enableBatchedIO(entries: 64) } catch {
                throw TapIOFailure(description: "--tap-io io-uring: \(error) (is io_uring disabled by sysctl kernel.io_uring_disabled or a seccomp filter? --tap-io writev works without it)")
            }
        case .auto:
            do { try tap.enableBatchedIO(entries: 64) } catch {
                logger.notice("io_uring unavailable (\(error)); one readv/writev per frame")
            }
        }
    }
}

struct TapIOFailure: Error, CustomStringConvertible {
    let description: String
}

struct BridgeFailure: Error, CustomStringConvertible {
    let description: String
}
