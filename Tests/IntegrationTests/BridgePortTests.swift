import Testing
import Glibc
import Foundation
import SystemCalls
import TapDevice
import VhostUserFrontend

/// `--bridge BR [--vlan ID]` through BridgePort: the TAP becomes a port of a real bridge in the
/// test's private network namespace, checked with iproute2's own view (`ip -j -d link`,
/// `bridge -j fdb`, `bridge -j vlan`).
@Suite(.serialized) struct BridgePortTests {
    static let guestMAC: [UInt8] = [0x52, 0x54, 0x00, 0x0b, 0x00, 0x01]
    static let guestMACText = "52:54:00:0b:00:01"

    @Test(.enabled(if: inPrivateNetns, "needs root, /dev/net/tun and a private netns (run under `unshare --net` with TAPWIRE_TEST_NETNS=1)"))
    func aTapBecomesAPortWithAStaticEntryAndNoLearningOrFlood() throws {
        let bridge = try TestBridge("a")
        let tap = try Tap(name: uniqueTapName("bpa"))
        let port = try BridgePort.attach(tap: tap.name, bridge: bridge.name, mac: Self.guestMAC)
        #expect(!port.tapIsPersistent, "a TAP this process created is not persistent")
        try expectPort(tap.name, of: bridge.name, learningAndFlood: false)
        try expectStaticEntry(for: tap.name, vlan: nil)

        // A restarted tapwire attaches the same TAP again: nothing fails, nothing doubles.
        let again = try BridgePort.attach(tap: tap.name, bridge: bridge.name, mac: Self.guestMAC)
        #expect(!again.enabledVLANFiltering)
        try expectPort(tap.name, of: bridge.name, learningAndFlood: false)
        try expectStaticEntry(for: tap.name, vlan: nil)
    }

    /// What learning off, flood off and the static entry are for: a frame for the guest's MAC
    /// reaches its TAP; unknown unicast (another VM's MAC) does not; broadcast still does.
    @Test(.enabled(if: inPrivateNetns, "needs root, /dev/net/tun and a private netns (run under `unshare --net` with TAPWIRE_TEST_NETNS=1)"))
    func onlyTheGuestsUnicastAndBroadcastReachTheTap() throws {
        let bridge = try TestBridge("f")
        let tap = try Tap(name: uniqueTapName("bpf"))
        try tap.setUp()
        let peer = "twbpv\(getpid() % 100000)"
        try sh("ip link add \(peer)a type veth peer name \(peer)b && ip link set \(peer)a master \(bridge.name) && ip link set \(peer)a up && ip link set \(peer)b up")
        defer { _ = try? sh("ip link del \(peer)a") }
        _ = try BridgePort.attach(tap: tap.name, bridge: bridge.name, mac: Self.guestMAC)
        usleep(300_000) // ports forward at once with forward_delay 0; give the links a moment
        let injector = try PacketSocket(interface: "\(peer)b")
        let forGuest = testFrame(length: 80, seed: 1, destination: Self.guestMAC)
        let forOther = testFrame(length: 80, seed: 2, destination: [0x52, 0x54, 0x00, 0x0b, 0x00, 0x99])
        let broadcast = testFrame(length: 80, seed: 3)
        for frame in [forOther, forGuest, broadcast] { try injector.send(frame) }
        let arrived = readTestFrames(tap, timeoutMilliseconds: 1000)
        #expect(arrived == [forGuest, broadcast], "the TAP got \(arrived.map { $0[5] }) (seeds: 1 guest's, 2 another MAC's, 3 broadcast)")
    }

    @Test(.enabled(if: inPrivateNetns, "needs root, /dev/net/tun and a private netns (run under `unshare --net` with TAPWIRE_TEST_NETNS=1)"))
    func withoutAMACLearningAndFloodStayAsTheyWere() throws {
        let bridge = try TestBridge("n")
        let tap = try Tap(name: uniqueTapName("bpn"))
        let port = try BridgePort.attach(tap: tap.name, bridge: bridge.name)
        #expect(port.mac == nil)
        try expectPort(tap.name, of: bridge.name, learningAndFlood: true)
        let entries = try json("bridge -j fdb show dev \(tap.name)")
        #expect(!entries.contains { $0["mac"] as? String == Self.guestMACText })
    }

    @Test(.enabled(if: inPrivateNetns && bridgeVLANFilteringAvailable,
                   "needs root, /dev/net/tun, a private netns and a kernel with CONFIG_BRIDGE_VLAN_FILTERING (\(bridgeVLANFilteringNote))"))
    func anAccessPortCarriesOneVLANUntagged() throws {
        let bridge = try TestBridge("v")
        let tap = try Tap(name: uniqueTapName("bpv"))
        let port = try BridgePort.attach(tap: tap.name, bridge: bridge.name, vlan: 10, mac: Self.guestMAC)
        #expect(port.enabledVLANFiltering)
        try expectAccessPort(tap.name, of: bridge.name, vlan: 10)
        try expectStaticEntry(for: tap.name, vlan: 10)

        let again = try BridgePort.attach(tap: tap.name, bridge: bridge.name, vlan: 10, mac: Self.guestMAC)
        #expect(!again.enabledVLANFiltering, "filtering was on already")
        try expectAccessPort(tap.name, of: bridge.name, vlan: 10)
        try expectStaticEntry(for: tap.name, vlan: 10)

        // Attached again on another VLAN (a persistent TAP under a changed config): only the
        // new VLAN is left, so the old one's frames cannot egress into this guest untagged.
        _ = try BridgePort.attach(tap: tap.name, bridge: bridge.name, vlan: 20, mac: Self.guestMAC)
        try expectAccessPort(tap.name, of: bridge.name, vlan: 20)
        try expectStaticEntry(for: tap.name, vlan: 20)

        // VLAN 1 as the access VLAN is kept, the rest removed.
        _ = try BridgePort.attach(tap: tap.name, bridge: bridge.name, vlan: 1)
        try expectAccessPort(tap.name, of: bridge.name, vlan: 1)
    }

    /// Where the kernel lacks VLAN filtering, --vlan fails at start-up and says why, rather
    /// than leaving a port that is not on the VLAN asked for.
    @Test(.enabled(if: inPrivateNetns && !bridgeVLANFilteringAvailable,
                   "needs root, /dev/net/tun, a private netns and a kernel without CONFIG_BRIDGE_VLAN_FILTERING (\(bridgeVLANFilteringNote))"))
    func aVLANOnAKernelWithoutVLANFilteringIsRefused() throws {
        let bridge = try TestBridge("u")
        let tap = try Tap(name: uniqueTapName("bpu"))
        let error = #expect(throws: BridgePort.AttachError.self) {
            try BridgePort.attach(tap: tap.name, bridge: bridge.name, vlan: 10, mac: Self.guestMAC)
        }
        guard case .vlanFilteringUnsupported(bridge.name)? = error else { Issue.record("\(String(describing: error))"); return }
        #expect("\(error!)".contains("CONFIG_BRIDGE_VLAN_FILTERING"))
    }

    @Test(.enabled(if: inPrivateNetns, "needs root, /dev/net/tun and a private netns (run under `unshare --net` with TAPWIRE_TEST_NETNS=1)"))
    func aMissingBridgeOrANonBridgeIsNamed() throws {
        let tap = try Tap(name: uniqueTapName("bpe"))
        let missing = #expect(throws: BridgePort.AttachError.self) {
            try BridgePort.attach(tap: tap.name, bridge: "twnobridge")
        }
        if case .noSuchInterface("twnobridge")? = missing {} else { Issue.record("\(String(describing: missing))") }
        #expect(missing.map { "\($0)" } == "twnobridge: no such interface")
        let veth = "twbpx\(getpid() % 100000)"
        try sh("ip link add \(veth) type veth peer name \(veth)p")
        defer { _ = try? sh("ip link del \(veth)") }
        let notBridge = #expect(throws: BridgePort.AttachError.self) {
            try BridgePort.attach(tap: tap.name, bridge: veth)
        }
        if case .notABridge(veth, kind: "veth")? = notBridge {} else { Issue.record("\(String(describing: notBridge))") }
        #expect(notBridge.map { "\($0)" }?.contains("\(veth) is not a bridge") == true)
        try expectNoPort(tap.name)
    }

    /// A TAP tapwire created goes when its last descriptor closes, and its port, VLANs and FDB
    /// entries with it: nothing is left on the bridge when tapwire exits.
    @Test(.enabled(if: inPrivateNetns, "needs root, /dev/net/tun and a private netns (run under `unshare --net` with TAPWIRE_TEST_NETNS=1)"))
    func aTapThisProcessCreatedLeavesTheBridgeWhenClosed() throws {
        let bridge = try TestBridge("c")
        let name = uniqueTapName("bpc")
        do {
            let tap = try Tap(name: name)
            _ = try BridgePort.attach(tap: tap.name, bridge: bridge.name, mac: Self.guestMAC)
            try expectPort(name, of: bridge.name, learningAndFlood: false)
            for queue in tap.queues { queue.close() }
        }
        var gone = false
        for _ in 0..<50 where !gone {
            gone = (try? sh("ip link show \(name)")) == nil
            if !gone { usleep(20_000) }
        }
        #expect(gone, "the TAP is gone")
        #expect(try json("bridge -j link show").allSatisfy { $0["master"] as? String != bridge.name }, "the bridge has no port left")
        #expect(try !json("bridge -j fdb show br \(bridge.name)").contains { $0["mac"] as? String == Self.guestMACText })
    }

    /// A persistent TAP (`ip tuntap add`) outlives tapwire and stays a port: BridgePort says so,
    /// and `ip link set dev TAP nomaster` (the documented ExecStopPost) removes the port with its
    /// FDB entry.
    @Test(.enabled(if: inPrivateNetns, "needs root, /dev/net/tun and a private netns (run under `unshare --net` with TAPWIRE_TEST_NETNS=1)"))
    func aPersistentTapIsReportedAndStays() throws {
        let bridge = try TestBridge("p")
        let name = uniqueTapName("bpp")
        try sh("ip tuntap add dev \(name) mode tap vnet_hdr")
        defer { _ = try? sh("ip link del \(name)") }
        do {
            let tap = try Tap(name: name)
            let port = try BridgePort.attach(tap: tap.name, bridge: bridge.name, mac: Self.guestMAC)
            #expect(port.tapIsPersistent)
            #expect(port.exitBehaviour.contains("ip link set dev \(name) nomaster"), "\(port.exitBehaviour)")
            for queue in tap.queues { queue.close() }
        }
        try expectPort(name, of: bridge.name, learningAndFlood: false)
        try expectStaticEntry(for: name, vlan: nil)
        try sh("ip link set dev \(name) nomaster")
        try expectNoPort(name)
        #expect(try !json("bridge -j fdb show br \(bridge.name)").contains { $0["mac"] as? String == Self.guestMACText })
    }

    // MARK: - What iproute2 sees

    private func expectPort(_ tap: String, of bridge: String, learningAndFlood: Bool, sourceLocation: SourceLocation = #_sourceLocation) throws {
        let link = try #require(try json("ip -j -d link show \(tap)").first, sourceLocation: sourceLocation)
        #expect(link["master"] as? String == bridge, "\(tap) is a port of \(bridge)", sourceLocation: sourceLocation)
        let info = link["linkinfo"] as? [String: Any]
        #expect(info?["info_slave_kind"] as? String == "bridge", sourceLocation: sourceLocation)
        let port = info?["info_slave_data"] as? [String: Any]
        #expect(port?["learning"] as? Bool == learningAndFlood, "learning", sourceLocation: sourceLocation)
        #expect(port?["flood"] as? Bool == learningAndFlood, "unicast flood", sourceLocation: sourceLocation)
    }

    private func expectNoPort(_ tap: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
        let link = try #require(try json("ip -j -d link show \(tap)").first, sourceLocation: sourceLocation)
        #expect(link["master"] == nil, "\(tap) is no port", sourceLocation: sourceLocation)
    }

    /// One static (NUD_NOARP: forwarded to the port, not local) entry for the guest's MAC on
    /// the port, with `vlan` if given.
    private func expectStaticEntry(for tap: String, vlan: Int?, sourceLocation: SourceLocation = #_sourceLocation) throws {
        let entries = try json("bridge -j fdb show dev \(tap)").filter { $0["mac"] as? String == Self.guestMACText }
        let matching = entries.filter { ($0["vlan"] as? Int) == vlan }
        #expect(matching.count == 1, "one entry for \(Self.guestMACText)\(vlan.map { " on VLAN \($0)" } ?? ""): \(entries)", sourceLocation: sourceLocation)
        #expect(matching.first?["state"] as? String == "static", "static, not permanent (local) or learned", sourceLocation: sourceLocation)
        #expect(matching.first?["master"] as? String != nil, sourceLocation: sourceLocation)
    }

    private func expectAccessPort(_ tap: String, of bridge: String, vlan: Int, sourceLocation: SourceLocation = #_sourceLocation) throws {
        let bridgeLink = try #require(try json("ip -j -d link show \(bridge)").first, sourceLocation: sourceLocation)
        let data = (bridgeLink["linkinfo"] as? [String: Any])?["info_data"] as? [String: Any]
        #expect(data?["vlan_filtering"] as? Int == 1, "VLAN filtering on", sourceLocation: sourceLocation)
        let vlans = try json("bridge -j vlan show dev \(tap)").first?["vlans"] as? [[String: Any]] ?? []
        #expect(vlans.count == 1, "only VLAN \(vlan) on the port: \(vlans)", sourceLocation: sourceLocation)
        #expect(vlans.first?["vlan"] as? Int == vlan, sourceLocation: sourceLocation)
        let flags = Set(vlans.first?["flags"] as? [String] ?? [])
        #expect(flags == ["PVID", "Egress Untagged"], "PVID and untagged: \(flags)", sourceLocation: sourceLocation)
    }
}

/// A bridge (no STP, forwarding at once), up, deleted when the value goes.
private final class TestBridge {
    let name: String
    init(_ tag: String) throws {
        name = "twbr\(tag)\(getpid() % 100000)"
        try sh("ip link add \(name) type bridge forward_delay 0 && ip link set \(name) up")
    }
    deinit { _ = try? sh("ip link del \(name)") }
}

private func json(_ command: String) throws -> [[String: Any]] {
    let output = try sh(command)
    guard !output.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty else { return [] }
    guard let list = try JSONSerialization.jsonObject(with: Data(output.utf8)) as? [[String: Any]] else {
        throw FrontendError("`\(command)` printed no JSON list: \(output)")
    }
    return list
}

/// The test frames (EtherType 0x88B5) that arrive on the TAP within the timeout, without their
/// virtio-net header.
private func readTestFrames(_ tap: Tap, timeoutMilliseconds: Int) -> [[UInt8]] {
    var frames = [[UInt8]]()
    var buffer = [UInt8](repeating: 0, count: 4096)
    let header = tap.vnetHeaderSize
    for _ in 0..<(timeoutMilliseconds / 10) {
        while true {
            let n = buffer.withUnsafeMutableBytes { read(tap.queues[0].raw, $0.baseAddress, $0.count) }
            guard n > header + 14 else { break }
            let frame = Array(buffer[header..<n])
            if frame[12] == 0x88 && frame[13] == 0xB5 { frames.append(frame) }
        }
        usleep(10_000)
    }
    return frames
}

/// Whether this kernel's bridges can filter VLANs (CONFIG_BRIDGE_VLAN_FILTERING); probed once
/// on a scratch bridge, inside the private netns only.
let bridgeVLANFilteringAvailable: Bool = {
    guard inPrivateNetns else { return false }
    let probe = "twbrprobe\(getpid() % 100000)"
    defer { _ = try? sh("ip link del \(probe)") }
    return (try? sh("ip link add \(probe) type bridge vlan_filtering 1")) != nil
}()

var bridgeVLANFilteringNote: String {
    guard inPrivateNetns else { return "not probed outside a private netns" }
    return bridgeVLANFilteringAvailable ? "this kernel has it" : "this kernel (\(kernelRelease)) has no bridge VLAN filtering: `ip link add B type bridge vlan_filtering 1` fails"
}

private var kernelRelease: String {
    var name = utsname()
    uname(&name)
    return withUnsafeBytes(of: name.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
}
