// libFuzzer target: port security's frame classifier (Sources/PortSecurity) on frames a
// hostile guest writes.
//
// Input: a policy, then the frame (Ethernet, without the virtio-net header).
//
//   0  u8   bit 0: allowRouter; bits 1-2: how many allowed networks follow (0-3)
//   1  6 B  the VM's MAC
//   7  u16  big-endian: the frame goes on this many bytes past the input's end (0: it ends
//           there; else a long or GSO frame of which only the start is inspected)
//   9  17 B per network: u8 (bit 7: IPv6; the rest modulo 33 or 129: prefix length), then 16
//           address bytes (an IPv4 one uses the first 4), masked to the prefix
//   .. the frame: its first min(length, PortFilter.inspectedBytes) bytes are what the
//      datapath would copy out of guest memory and hand to checkTransmit
//
// Each check gets a buffer of exactly the bytes it may read (malloc'd, so ASan reports a read
// one past it). Besides not crashing, the verdicts must hold these invariants:
//  1. bytes past frameLength do not change the verdict (the filter reads only the frame);
//  2. allowRouter only relaxes: it turns rogue_dhcp/rogue_ra into another verdict, nothing else;
//  3. more allowed IPs only relax: a frame that passes still passes with 0.0.0.0/0 and ::/0 added;
//  4. more inspected bytes only help: a frame that passes with a shorter prefix inspected
//     passes with the whole prefix;
//  5. a frame that passes has, by the harness's own reading of it: the VM's source MAC, at
//     most two VLAN tags, IPv4/IPv6/ARP/RARP; an IPv4 source that is allowed or 0.0.0.0 from
//     UDP 68 to 67; an ARP sender MAC that is the VM's and an allowed or zero sender IP; a
//     whole IPv6 header whose source is allowed, the EUI-64 link-local or ::;
//  6. checkReceive passes exactly the frames whose destination is a group address or the VM's.
import Glibc
import PortSecurity
import FuzzSupport

@inline(never)
private func fail(_ message: String) -> Never {
    fz_fail(message)
}

private func check(_ condition: Bool, _ message: @autoclosure () -> String) {
    if !condition { fail(message()) }
}

private enum Layout {
    static let policyHeader = 9
    static let macOffset = 1
    static let extraOffset = 7
    static let networkRecord = 17
    static let maxNetworks = 3
    static let ethernetSource = 6
    static let ethernetType = 12
    static let vlanTag = 4
    static let maxTags = 2
    static let ipv4Header = 20
    static let ipv6Header = 40
    static let arpBody = 28
    static let arpSenderMAC = 8
    static let arpSenderIP = 14
    static let ipv4ProtocolOffset = 9
    static let ipv4FragmentOffset = 6
    static let ipv4FragmentMask: UInt16 = 0x1fff
    static let ipv4SourceOffset = 12
    static let ipv6SourceOffset = 8
    /// Junk appended past a frame's end for invariant 1.
    static let junk = 16
}

private enum Number {
    static let etherIPv4: UInt16 = 0x0800, etherARP: UInt16 = 0x0806, etherRARP: UInt16 = 0x8035, etherIPv6: UInt16 = 0x86DD
    static let etherVLAN: UInt16 = 0x8100, etherQinQ: UInt16 = 0x88A8
    static let udp: UInt8 = 17
    static let dhcpServer: UInt16 = 67, dhcpClient: UInt16 = 68
    /// The I/G bit of a destination MAC's first byte: a group (broadcast/multicast) address.
    static let groupBit: UInt8 = 1
}

/// Big-endian reads of the input that return nil past its end.
private struct Bytes {
    let raw: UnsafeRawBufferPointer
    subscript(_ i: Int) -> UInt8? {
        // SAFETY: 0 <= i < raw.count.
        i >= 0 && i < raw.count ? raw[i] : nil
    }
    func u16(_ i: Int) -> UInt16? {
        guard let a = self[i], let b = self[i + 1] else { return nil }
        return UInt16(a) << 8 | UInt16(b)
    }
    func u32(_ i: Int) -> UInt32? {
        guard let a = u16(i), let b = u16(i + 2) else { return nil }
        return UInt32(a) << 16 | UInt32(b)
    }
    func u64(_ i: Int) -> UInt64? {
        guard let a = u32(i), let b = u32(i + 4) else { return nil }
        return UInt64(a) << 32 | UInt64(b)
    }
    func mac(_ i: Int) -> [UInt8]? {
        guard i >= 0 && i + 6 <= raw.count else { return nil }
        return (i..<i + 6).map { raw[$0] }
    }
}

private func mask32(_ length: Int) -> UInt32 { length == 0 ? 0 : UInt32.max << UInt32(32 - length) }
private func mask64(_ length: Int) -> UInt64 { length <= 0 ? 0 : length >= 64 ? UInt64.max : UInt64.max << UInt64(64 - length) }

/// The harness's own notion of an allowed network, kept beside the IPNetwork it builds.
private struct Network {
    let v6: Bool
    let length: Int
    let high: UInt64 // IPv4: the address in the low 32 bits
    let low: UInt64

    func contains(v4 address: UInt32) -> Bool { !v6 && UInt64(address & mask32(length)) == high }
    func contains(high h: UInt64, low l: UInt64) -> Bool {
        v6 && h & mask64(length) == high && l & mask64(length - 64) == low
    }
    var ipNetwork: IPNetwork {
        v6 ? .v6(high: high, low: low, prefixLength: length) : .v4(address: UInt32(high), prefixLength: length)
    }
}

private func parseNetwork(_ input: Bytes, at offset: Int) -> Network {
    let kind = input[offset] ?? 0
    let v6 = kind & 0x80 != 0
    if v6 {
        let length = Int(kind & 0x7f) % (IPNetwork.ipv6Bits + 1)
        let high = (input.u64(offset + 1) ?? 0) & mask64(length)
        let low = (input.u64(offset + 9) ?? 0) & mask64(length - 64)
        return Network(v6: true, length: length, high: high, low: low)
    }
    let length = Int(kind & 0x7f) % (IPNetwork.ipv4Bits + 1)
    return Network(v6: false, length: length, high: UInt64((input.u32(offset + 1) ?? 0) & mask32(length)), low: 0)
}

/// checkTransmit on a malloc'd copy of the first `shown` bytes of `frame` (plus `junk` bytes
/// of 0xA5 after them), so that ASan sees a read past what the filter was given.
private func transmit(_ filter: PortFilter, _ frame: UnsafeRawBufferPointer, shown: Int, frameLength: Int, junk: Int = 0) -> PortViolation? {
    let size = shown + junk
    guard let memory = malloc(max(size, 1)) else { fail("malloc") }
    defer { free(memory) }
    let buffer = UnsafeMutableRawBufferPointer(start: memory, count: size)
    // SAFETY: shown <= frame.count and buffer holds shown + junk bytes.
    buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: frame.prefix(shown)))
    for i in shown..<size { buffer[i] = 0xA5 }
    return filter.checkTransmit(UnsafeRawBufferPointer(buffer), frameLength: frameLength)
}

private func receive(_ filter: PortFilter, _ frame: UnsafeRawBufferPointer) -> PortViolation? {
    guard let memory = malloc(max(frame.count, 1)) else { fail("malloc") }
    defer { free(memory) }
    let buffer = UnsafeMutableRawBufferPointer(start: memory, count: frame.count)
    // SAFETY: buffer holds exactly frame.count bytes.
    buffer.copyMemory(from: frame)
    return filter.checkReceive(UnsafeRawBufferPointer(buffer))
}

/// Invariant 5: what a passing frame must be, read by the harness itself.
private func checkPassed(_ f: Bytes, mac: [UInt8], networks: [Network], linkLocal: (high: UInt64, low: UInt64)) {
    check(f.mac(Layout.ethernetSource) == mac, "passed with source MAC \(String(describing: f.mac(Layout.ethernetSource)))")
    var typeOffset = Layout.ethernetType
    var tags = 0
    while let type = f.u16(typeOffset), type == Number.etherVLAN || type == Number.etherQinQ {
        tags += 1
        typeOffset += Layout.vlanTag
    }
    check(tags <= Layout.maxTags, "passed with \(tags) VLAN tags")
    let l3 = typeOffset + 2
    switch f.u16(typeOffset) {
    case Number.etherIPv4:
        guard let versionIHL = f[l3], let source = f.u32(l3 + Layout.ipv4SourceOffset) else { fail("IPv4 passed without its source address") }
        let headerLength = Int(versionIHL & 0x0f) * 4
        check(versionIHL >> 4 == 4 && headerLength >= Layout.ipv4Header && l3 + headerLength <= f.raw.count,
              "IPv4 passed with version/IHL \(versionIHL) in \(f.raw.count) inspected bytes")
        if !networks.contains(where: { $0.contains(v4: source) }) {
            check(source == 0, "IPv4 from a source not allowed passed")
            let l4 = l3 + headerLength
            let fragmentOffset = (f.u16(l3 + Layout.ipv4FragmentOffset) ?? 0) & Layout.ipv4FragmentMask
            check(f[l3 + Layout.ipv4ProtocolOffset] == Number.udp && fragmentOffset == 0
                  && f.u16(l4) == Number.dhcpClient && f.u16(l4 + 2) == Number.dhcpServer, "IPv4 from 0.0.0.0 passed, not DHCP")
        }
    case Number.etherARP, Number.etherRARP:
        check(l3 + Layout.arpBody <= f.raw.count, "ARP passed without its whole body")
        check(f.mac(l3 + Layout.arpSenderMAC) == mac, "ARP passed with a foreign sender MAC")
        let sender = f.u32(l3 + Layout.arpSenderIP) ?? 0
        check(sender == 0 || networks.contains { $0.contains(v4: sender) }, "ARP passed with a sender IP not allowed")
    case Number.etherIPv6:
        check(l3 + Layout.ipv6Header <= f.raw.count && (f[l3] ?? 0) >> 4 == 6, "IPv6 passed without a whole IPv6 header")
        let high = f.u64(l3 + Layout.ipv6SourceOffset) ?? 0, low = f.u64(l3 + Layout.ipv6SourceOffset + 8) ?? 0
        check((high == 0 && low == 0) || (high == linkLocal.high && low == linkLocal.low)
              || networks.contains { $0.contains(high: high, low: low) }, "IPv6 passed from a source not allowed")
    default:
        fail("passed with EtherType \(String(describing: f.u16(typeOffset)))")
    }
}

private func run(_ input: Bytes) {
    let flags = input[0] ?? 0
    let allowRouter = flags & 1 != 0
    let networkCount = min(Int(flags >> 1) & 3, Layout.maxNetworks)
    let mac = (0..<6).map { input[Layout.macOffset + $0] ?? 0 }
    let extra = Int(input.u16(Layout.extraOffset) ?? 0)
    let networks = (0..<networkCount).map { parseNetwork(input, at: Layout.policyHeader + $0 * Layout.networkRecord) }
    let frameStart = min(Layout.policyHeader + networkCount * Layout.networkRecord, input.raw.count)
    let frame = UnsafeRawBufferPointer(rebasing: input.raw[frameStart...])
    let frameLength = frame.count + extra
    let shown = min(frameLength, PortFilter.inspectedBytes, frame.count)

    let policy = PortPolicy(mac: mac, allowedIPs: networks.map(\.ipNetwork), allowRouter: allowRouter)
    let filter = PortFilter(policy)
    let verdict = transmit(filter, frame, shown: shown, frameLength: frameLength)

    // 1. Past frameLength nothing is read (only meaningful when the frame ends in the buffer).
    if frameLength == shown {
        let withJunk = transmit(filter, frame, shown: shown, frameLength: frameLength, junk: Layout.junk)
        check(withJunk == verdict, "bytes past the frame's end changed \(String(describing: verdict)) to \(String(describing: withJunk))")
    }

    // 2. allowRouter relaxes exactly the router rules.
    let strict = allowRouter ? transmit(PortFilter(PortPolicy(mac: mac, allowedIPs: policy.allowedIPs)), frame, shown: shown, frameLength: frameLength) : verdict
    let permissive = allowRouter ? verdict : transmit(PortFilter(PortPolicy(mac: mac, allowedIPs: policy.allowedIPs, allowRouter: true)), frame, shown: shown, frameLength: frameLength)
    check(permissive != .rogueDHCP && permissive != .rogueRA, "allowRouter still refused as \(String(describing: permissive))")
    check(strict == permissive || strict == .rogueDHCP || strict == .rogueRA,
          "allowRouter changed \(String(describing: strict)) to \(String(describing: permissive))")

    // 3. Everything allowed: a pass stays a pass.
    if verdict == nil {
        let all = PortFilter(PortPolicy(mac: mac, allowedIPs: policy.allowedIPs + [.v4(address: 0, prefixLength: 0), .v6(high: 0, low: 0, prefixLength: 0)],
                                        allowRouter: allowRouter))
        let wide = transmit(all, frame, shown: shown, frameLength: frameLength)
        check(wide == nil, "adding 0.0.0.0/0 and ::/0 refused a passing frame as \(String(describing: wide))")
    }

    // 4. A shorter inspected prefix never passes what the whole one refuses. The cut is taken
    // from the frame's last byte so that the fuzzer steers it.
    if shown > 0 {
        let cut = Int(frame[frame.count - 1]) % shown
        let shorter = transmit(filter, frame, shown: cut, frameLength: frameLength)
        check(shorter == nil ? verdict == nil : true,
              "\(cut) inspected bytes passed, \(shown) refused as \(String(describing: verdict))")
    }

    // 5. A pass is what the rules allow.
    if verdict == nil {
        checkPassed(Bytes(raw: UnsafeRawBufferPointer(rebasing: frame.prefix(shown))), mac: mac, networks: networks, linkLocal: policy.linkLocal)
    }

    // 6. Receive.
    let expected = frame.count >= 6 && (frame[0] & Number.groupBit != 0 || Array(frame.prefix(6)) == mac)
    let received = receive(filter, frame)
    check((received == nil) == expected, "checkReceive said \(String(describing: received)) for destination \(Array(frame.prefix(6)))")
    check(received == nil || received == .notForThisVM, "checkReceive refused as \(String(describing: received))")
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzPortFilter(_ bytes: UnsafePointer<UInt8>?, _ count: Int) -> Int32 {
    run(Bytes(raw: UnsafeRawBufferPointer(start: count > 0 ? bytes : nil, count: count)))
    return 0
}
