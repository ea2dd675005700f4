// rtnetlink ABI for attaching a TAP to a Linux bridge (Sources/SystemCalls/Netlink.swift,
// Sources/TapDevice/BridgePort.swift). The kernel's own UAPI headers are included, so every
// message type, attribute number and flag Swift uses comes from them; Swift's Glibc module
// has none of them. The NLMSG_*/RTA_* alignment macros are function-like and do not import:
// Netlink.swift computes alignment from TW_NETLINK_ALIGNTO below.
#ifndef CTAPWIRE_NETLINK_SHIM_H
#define CTAPWIRE_NETLINK_SHIM_H

// <netinet/in.h> before <linux/if_bridge.h>: it defines in6_addr first, so the kernel's
// <linux/in6.h> (pulled in by if_bridge.h) stands down through <linux/libc-compat.h>.
#include <netinet/in.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/if_link.h>
#include <linux/if_bridge.h>
#include <linux/neighbour.h>

/// NLMSG_ALIGNTO and NLA_ALIGNTO (both 4): messages and attributes start on this boundary.
enum { TW_NETLINK_ALIGNTO = NLMSG_ALIGNTO };
/// An attribute's type without its NLA_F_NESTED / NLA_F_NET_BYTEORDER flags (the macro is an
/// expression Swift does not import; as a plain int it would be negative).
enum { TW_NLA_TYPE_MASK = (unsigned short)NLA_TYPE_MASK }; // 0x3fff: nla_type is a u16

_Static_assert(NLMSG_ALIGNTO == NLA_ALIGNTO, "message and attribute alignment agree");
_Static_assert(sizeof(struct nlmsghdr) == 16, "nlmsghdr is 16 bytes");
_Static_assert(sizeof(struct nlattr) == 4, "nlattr is 4 bytes");
_Static_assert(sizeof(struct ifinfomsg) == 16, "ifinfomsg is 16 bytes");
_Static_assert(sizeof(struct ndmsg) == 12, "ndmsg is 12 bytes");
_Static_assert(sizeof(struct nlmsgerr) == 20, "nlmsgerr is an int and the request's nlmsghdr");
_Static_assert(sizeof(struct bridge_vlan_info) == 4, "bridge_vlan_info is flags then vid");

#endif
