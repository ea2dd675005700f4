import CTapwire
import SystemCalls

/// A TAP made a port of a Linux bridge, through rtnetlink, at start-up (it needs
/// CAP_NET_ADMIN; netlink checks it on the socket's opener and on each sender, so none of
/// this can be done once capabilities are dropped).
///
/// With a VLAN the port is an access port: member of that VLAN only, as PVID and untagged, so
/// the guest sends and receives untagged frames that carry the tag on the bridge. With the
/// guest's MAC the port gets a static FDB entry for it and loses learning and unicast flood:
/// unknown unicast for other VMs never reaches this TAP (nor the guest's memory), and a guest
/// sending from a neighbour's MAC cannot move the neighbour's FDB entry to itself.
///
/// Every step is idempotent, so a restarted tapwire attaches the same TAP again.
public struct BridgePort: Sendable {
    public let tap: String
    public let bridge: String
    public let vlan: Int?
    public let mac: [UInt8]?
    /// The TAP outlives tapwire (IFF_PERSIST, made with `ip tuntap add`): it stays a port of
    /// the bridge, with its VLAN and FDB entry, after tapwire exits. A TAP tapwire created is
    /// removed by the kernel when its last descriptor closes, and its port, VLANs and FDB
    /// entries with it.
    public let tapIsPersistent: Bool
    /// Attaching turned the bridge's VLAN filtering on (it was off).
    public let enabledVLANFiltering: Bool

    public enum AttachError: Error, CustomStringConvertible, Sendable {
        case noSuchInterface(String)
        case notABridge(String, kind: String?)
        /// The kernel was built without CONFIG_BRIDGE_VLAN_FILTERING: it refuses to turn VLAN
        /// filtering on (EOPNOTSUPP).
        case vlanFilteringUnsupported(String)
        case failed(SystemError)

        public var description: String {
            switch self {
            case .noSuchInterface(let name): return "\(name): no such interface"
            case .notABridge(let name, let kind): return "\(name) is not a bridge (\(kind.map { "it is of kind \($0)" } ?? "it is a plain device"))"
            case .vlanFilteringUnsupported(let name): return "\(name) cannot filter VLANs: this kernel was built without CONFIG_BRIDGE_VLAN_FILTERING (attach without --vlan, or use a kernel that has it)"
            case .failed(let error): return "\(error)"
            }
        }
    }

    /// Makes `tap` a port of `bridge`; with `vlan`, an access port of that VLAN (turning the
    /// bridge's VLAN filtering on if it is off); with `mac` (6 bytes), a static FDB entry for
    /// it on the port, and learning and unicast flood off there.
    public static func attach(tap: String, bridge: String, vlan: Int? = nil, mac: [UInt8]? = nil) throws(AttachError) -> BridgePort {
        precondition(vlan.map { (1...4094).contains($0) } ?? true, "VLAN IDs are 1...4094")
        precondition(mac.map { $0.count == 6 } ?? true, "a MAC is 6 bytes")
        let netlink: NetlinkSocket
        do { netlink = try NetlinkSocket() } catch { throw .failed(error) }
        defer { netlink.close() }
        let bridgeLink = try Link.find(bridge, on: netlink)
        guard bridgeLink.kind == "bridge" else { throw AttachError.notABridge(bridge, kind: bridgeLink.kind) }
        let tapLink = try Link.find(tap, on: netlink)

        var enabledFiltering = false
        if vlan != nil && bridgeLink.vlanFiltering != true {
            var message = NetlinkMessage(type: RouteNetlink.newLink, header: RouteNetlink.interfaceHeader(index: bridgeLink.index))
            message.nest(RouteNetlink.linkInfo) { info in
                info.append(RouteNetlink.infoKind, string: "bridge")
                info.nest(RouteNetlink.infoData) { $0.append(RouteNetlink.bridgeVLANFiltering, value: UInt8(1)) }
            }
            do {
                try netlink.request(message, "turn on VLAN filtering on \(bridge) (RTM_NEWLINK IFLA_BR_VLAN_FILTERING)")
            } catch {
                throw error.isNotSupported ? .vlanFilteringUnsupported(bridge) : .failed(error)
            }
            enabledFiltering = true
        }

        // Enslaving to the bridge it is already a port of changes nothing (the kernel
        // compares masters first).
        var enslave = NetlinkMessage(type: RouteNetlink.setLink, header: RouteNetlink.interfaceHeader(index: tapLink.index))
        enslave.append(RouteNetlink.master, value: UInt32(bitPattern: bridgeLink.index))
        try netlink.perform(enslave, "make \(tap) a port of \(bridge) (RTM_SETLINK IFLA_MASTER)")

        if let vlan {
            try makeAccessPort(tapLink.index, vlan: UInt16(vlan), netlink: netlink, tap: tap)
        }
        if let mac {
            // NUD_NOARP alone is `bridge fdb add ... static`: forwarded to this port and never
            // aged. NUD_PERMANENT would make it a *local* entry (BR_FDB_LOCAL): the bridge
            // would deliver the guest's frames to the host stack instead of the TAP.
            // Without NDA_VLAN on a VLAN-filtering bridge the kernel adds the entry for every
            // VLAN of the port. CREATE without EXCL: an existing entry for the MAC is updated
            // to be ours and static (a restart, or one learned elsewhere before a migration).
            var entry = NetlinkMessage(type: RouteNetlink.newNeighbour, flags: RouteNetlink.create | RouteNetlink.replace,
                                       header: RouteNetlink.neighbourHeader(family: RouteNetlink.familyBridge, index: tapLink.index,
                                                                            state: RouteNetlink.neighbourNoARP,
                                                                            flags: RouteNetlink.neighbourOnMaster))
            entry.append(RouteNetlink.neighbourLinkAddress, bytes: mac)
            if let vlan { entry.append(RouteNetlink.neighbourVLAN, value: UInt16(vlan)) }
            try netlink.perform(entry, "static FDB entry for \(tap) on \(bridge)\(vlan.map { " VLAN \($0)" } ?? "") (RTM_NEWNEIGH)")

            var port = NetlinkMessage(type: RouteNetlink.setLink, header: RouteNetlink.interfaceHeader(family: RouteNetlink.familyBridge, index: tapLink.index))
            port.nest(RouteNetlink.protocolInfo) { info in
                info.append(RouteNetlink.portLearning, value: UInt8(0))
                info.append(RouteNetlink.portUnicastFlood, value: UInt8(0))
            }
            try netlink.perform(port, "learning and unicast flood off on port \(tap) (RTM_SETLINK IFLA_PROTINFO)")
        }
        return BridgePort(tap: tap, bridge: bridge, vlan: vlan, mac: mac,
                          tapIsPersistent: tapLink.tunPersistent == true, enabledVLANFiltering: enabledFiltering)
    }

    /// Member of `vlan` only, as PVID and untagged: add it first (the PVID moves to it), then
    /// remove every other VID (1...4094 but `vlan`), which drops the default VID 1 and any VLAN
    /// left from an earlier attachment of a persistent TAP. The kernel ignores VIDs the port
    /// does not have when deleting, so this is idempotent.
    private static func makeAccessPort(_ index: Int32, vlan: UInt16, netlink: NetlinkSocket, tap: String) throws(AttachError) {
        var add = NetlinkMessage(type: RouteNetlink.setLink, header: RouteNetlink.interfaceHeader(family: RouteNetlink.familyBridge, index: index))
        add.nest(RouteNetlink.afSpec) { spec in
            spec.append(RouteNetlink.bridgeVLANInfo, value: vlanInfo(flags: RouteNetlink.vlanPVID | RouteNetlink.vlanUntagged, vid: vlan))
        }
        try netlink.perform(add, "VLAN \(vlan) PVID untagged on port \(tap) (RTM_SETLINK IFLA_BRIDGE_VLAN_INFO)")

        let others = [1..<vlan, (vlan + 1)..<4095].filter { !$0.isEmpty }
        guard !others.isEmpty else { return }
        var remove = NetlinkMessage(type: RouteNetlink.deleteLink, header: RouteNetlink.interfaceHeader(family: RouteNetlink.familyBridge, index: index))
        remove.nest(RouteNetlink.afSpec) { spec in
            for range in others {
                let last = range.upperBound - 1
                if range.lowerBound == last {
                    spec.append(RouteNetlink.bridgeVLANInfo, value: vlanInfo(flags: 0, vid: last))
                } else {
                    spec.append(RouteNetlink.bridgeVLANInfo, value: vlanInfo(flags: RouteNetlink.vlanRangeBegin, vid: range.lowerBound))
                    spec.append(RouteNetlink.bridgeVLANInfo, value: vlanInfo(flags: RouteNetlink.vlanRangeEnd, vid: last))
                }
            }
        }
        try netlink.perform(remove, "remove VLANs other than \(vlan) from port \(tap) (RTM_DELLINK IFLA_BRIDGE_VLAN_INFO)")
    }

    private static func vlanInfo(flags: UInt16, vid: UInt16) -> bridge_vlan_info {
        var info = bridge_vlan_info()
        info.flags = flags
        info.vid = vid
        return info
    }

    /// What stays on the bridge once tapwire exits, for the operator: nothing for a TAP
    /// tapwire created; for a persistent one, the port with its VLAN and FDB entry, and the
    /// command that removes it.
    public var exitBehaviour: String {
        guard tapIsPersistent else {
            return "\(tap) is not persistent: when tapwire exits the kernel removes it, and with it its port on \(bridge) and the port's VLANs and FDB entries"
        }
        return "\(tap) is persistent: it stays a port of \(bridge)\(vlan.map { " on VLAN \($0)" } ?? "")\(mac == nil ? "" : " with its static FDB entry") "
            + "after tapwire exits (the TAP drops what the bridge forwards to it while no process holds it; the next process to open it gets this port's traffic; a restarted tapwire attaches it again); "
            + "without capabilities tapwire cannot leave the bridge itself: `ip link set dev \(tap) nomaster` removes the port with its VLANs and FDB entries "
            + "(ExecStopPost=-+/usr/sbin/ip link set dev \(tap) nomaster in a drop-in of tapwire@.service)"
    }
}

/// What RTM_GETLINK says about an interface.
private struct Link {
    let index: Int32
    /// IFLA_INFO_KIND: "bridge", "tun", "veth", ...; nil for a device without one (e.g. lo).
    let kind: String?
    /// IFLA_BR_VLAN_FILTERING of a bridge.
    let vlanFiltering: Bool?
    /// IFLA_TUN_PERSIST of a TAP.
    let tunPersistent: Bool?

    static func find(_ name: String, on netlink: NetlinkSocket) throws(BridgePort.AttachError) -> Link {
        var query = NetlinkMessage(type: RouteNetlink.getLink, header: RouteNetlink.interfaceHeader())
        query.append(RouteNetlink.interfaceName, string: name)
        let what = "look up \(name) (RTM_GETLINK)"
        let replies: [NetlinkReply]
        do {
            replies = try netlink.request(query, what)
        } catch {
            throw error.isNoSuchDevice ? .noSuchInterface(name) : .failed(error)
        }
        guard let reply = replies.first(where: { $0.type == RouteNetlink.newLink }),
              let header = reply.header(ifinfomsg.self) else {
            throw .failed(.malformedNetlinkAnswer(what))
        }
        let attributes = reply.attributes(after: ifinfomsg.self)
        let info = attributes.nested(RouteNetlink.linkInfo)
        let data = info?.nested(RouteNetlink.infoData)
        return Link(index: header.ifi_index, kind: info?.string(RouteNetlink.infoKind),
                    vlanFiltering: data?.integer(RouteNetlink.bridgeVLANFiltering, as: UInt8.self).map { $0 != 0 },
                    tunPersistent: data?.integer(RouteNetlink.tunPersistent, as: UInt8.self).map { $0 != 0 })
    }
}

private extension NetlinkSocket {
    /// A request whose failure fails the attachment.
    @discardableResult
    func perform(_ message: NetlinkMessage, _ what: String) throws(BridgePort.AttachError) -> [NetlinkReply] {
        do { return try request(message, what) } catch { throw .failed(error) }
    }
}
