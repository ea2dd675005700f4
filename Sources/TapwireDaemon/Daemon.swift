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
        var tap: Tap?
        if !command.sink, let name = command.tap {
            let opened = try Tap(name: name, queueCount: config.queuePairs)
            if let mtu = config.mtu { try opened.setMTU(mtu) }
            do { try opened.setUp() } catch { logger.warning("\(error) (bring it up yourself)") }
            try enableBatchedIO(opened)
            logger.info("TAP \(opened.name) ready with \(opened.queues.count) queue(s), frames in \(opened.ioRings.isEmpty ? "one readv/writev each" : "io_uring batches")")
            tap = opened
        } else {
            logger.info("sink mode: guest transmit is dropped, nothing is received")
        }
        let device = NetDevice(config: config, tap: tap, logger: logger, now: monotonicNanoseconds())
        logger.info("offering offloads: \(device.availableOffloads.names.joined(separator: ","))")
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
