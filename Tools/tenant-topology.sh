#!/usr/bin/env bash
# Joins two "hosts" (network namespaces, each with a VLAN-filtering Linux bridge whose access
# ports are the tenants' VM ports) so that every tenant's VLAN reaches the other host, and only
# that tenant's VLAN:
#   --underlay vxlan (default): a veth between the namespaces is the IP underlay (UDP 4789);
#     each tenant gets its own kernel VXLAN device per host, vx<VLAN>, with VNI --tenant's
#     VNI (default 10000+VLAN), local/remote the underlay addresses, as a port of the bridge
#     with the tenant's VLAN as PVID untagged (its only VLAN). The VNI, not the VLAN, names the
#     tenant between hosts: 16M VNIs, while one bridge's VLANs (4094) only have to cover the
#     tenants present on that host.
#   --underlay vlan: the veth is a bridge port on both ends, an 802.1Q trunk tagged with every
#     tenant's VLAN (and nothing else), the classic layout for up to 4094 tenants in total.
#   --tenant-bridges PREFIX: for a kernel without bridge VLAN filtering (CONFIG_VLAN_8021Q and
#     CONFIG_BRIDGE_VLAN_FILTERING off, as on some cloud kernels): every tenant has its own
#     bridge PREFIX<VLAN> per host instead of a VLAN of one bridge (the VLAN number only names
#     the tenant locally), and its VXLAN device is a plain port of that bridge. VXLAN only.
# Why one VXLAN device per tenant rather than one `external vnifilter` device with `bridge
# vlan ... tunnel_info id`: Debian 12's kernel (6.1) and iproute2 (6.1) support both, but the
# per-tenant device works on any kernel, needs no per-VNI flood entries (`remote` is its
# default destination), and gives each tenant's tunnel its own interface and counters, which
# is what Tools/tenant-check.sh asserts on. One netdev per tenant per host is fine for
# thousands of tenants; beyond that the single external device scales better.
#
# Usage: Tools/tenant-topology.sh up|down|show [options] NS1 NS2
#   up      create the underlay (creates --bridge in a namespace that lacks it)
#   down    remove what `up` created (found by its interface alias, so no options needed)
#   show    print the bridges' VLANs, the VXLAN devices and their forwarding entries
# Options:
#   --underlay vxlan|vlan   (default vxlan)
#   --tenant VLAN[:VNI]     a tenant's VLAN (1-4094) and VNI (1-16777215); repeatable; at least
#                           one for `up`
#   --bridge NAME           the bridge in each namespace (default br0)
#   --tenant-bridges PREFIX one bridge per tenant, PREFIX<VLAN>, instead of --bridge's VLANs
#   --underlay-ips IP1,IP2  the underlay addresses in NS1 and NS2 (vxlan; default
#                           10.99.0.1,10.99.0.2, a /24)
#   --link NAME             the underlay veth's name on both ends (default twul0)
# Exit status: 0 on success; 1 with a message on bad options or when a step fails.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

usage() { sed -n '2,/^# Exit status/s/^# \{0,1\}//p' "$0"; }

VXLAN_PORT=4789          # IANA's VXLAN port
VXLAN_OVERHEAD=50        # outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8
TENANT_MTU=1500          # what the guests' frames may be, carried whole through the tunnel
VNI_BASE=10000           # default VNI = VNI_BASE + VLAN
ALIAS=tw-tenant-topology # marks what `up` made, for `down`

CMD=${1:-}
[[ -n $CMD ]] || { usage >&2; tw_die "missing subcommand (up, down or show)"; }
shift
case $CMD in up | down | show) ;; -h | --help) usage; exit 0 ;; *) usage >&2; tw_die "unknown subcommand '$CMD'" ;; esac

UNDERLAY=vxlan
TENANTS=()
BRIDGE=br0
TENANT_BRIDGES=
UL_IPS=10.99.0.1,10.99.0.2
UL_PREFIX=24
LINK=twul0
NSS=()
need_arg() { (($# >= 2)) || tw_die "$1 needs a value"; }
while (($#)); do
    case $1 in
        --underlay) need_arg "$@"; UNDERLAY=$2; shift ;;
        --tenant) need_arg "$@"; TENANTS+=("$2"); shift ;;
        --bridge) need_arg "$@"; BRIDGE=$2; shift ;;
        --tenant-bridges) need_arg "$@"; TENANT_BRIDGES=$2; shift ;;
        --underlay-ips) need_arg "$@"; UL_IPS=$2; shift ;;
        --link) need_arg "$@"; LINK=$2; shift ;;
        -h | --help) usage; exit 0 ;;
        -*) usage >&2; tw_die "unknown option '$1'" ;;
        *) NSS+=("$1") ;;
    esac
    shift
done
((${#NSS[@]} == 2)) || tw_die "need exactly two namespaces (NS1 NS2), got ${#NSS[@]}"
[[ ${NSS[0]} != "${NSS[1]}" ]] || tw_die "NS1 and NS2 must differ"
case $UNDERLAY in vxlan | vlan) ;; *) tw_die "--underlay must be vxlan or vlan, not '$UNDERLAY'" ;; esac
ifname_ok() { [[ $1 =~ ^[A-Za-z0-9_.-]{1,15}$ ]]; }
ifname_ok "$BRIDGE" || tw_die "--bridge '$BRIDGE' is not an interface name"
ifname_ok "$LINK" || tw_die "--link '$LINK' is not an interface name"
[[ -z $TENANT_BRIDGES ]] || ifname_ok "${TENANT_BRIDGES}4094" ||
    tw_die "--tenant-bridges '$TENANT_BRIDGES': PREFIX plus a VLAN number must be an interface name (at most 11 characters)"
[[ -z $TENANT_BRIDGES || $UNDERLAY == vxlan ]] || tw_die "--tenant-bridges has no VLANs to trunk: use --underlay vxlan"
ipv4_ok() { [[ $1 =~ ^([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})$ ]] && ((BASH_REMATCH[1] < 256 && BASH_REMATCH[2] < 256 && BASH_REMATCH[3] < 256 && BASH_REMATCH[4] < 256)); }
UL_IP1=${UL_IPS%%,*} UL_IP2=${UL_IPS#*,}
if ! ipv4_ok "$UL_IP1" || ! ipv4_ok "$UL_IP2" || [[ $UL_IP1 == "$UL_IP2" ]]; then
    tw_die "--underlay-ips must be two different IPv4 addresses, IP1,IP2 (not '$UL_IPS')"
fi

# Parse --tenant VLAN[:VNI] into VLANS[i] / VNIS[i].
VLANS=() VNIS=()
for t in "${TENANTS[@]}"; do
    [[ $t =~ ^([0-9]+)(:([0-9]+))?$ ]] || tw_die "--tenant '$t': expected VLAN or VLAN:VNI"
    vlan=${BASH_REMATCH[1]} vni=${BASH_REMATCH[3]:-$((VNI_BASE + BASH_REMATCH[1]))}
    ((vlan >= 1 && vlan <= 4094)) || tw_die "--tenant '$t': VLAN must be 1-4094"
    ((vni >= 1 && vni <= 16777215)) || tw_die "--tenant '$t': VNI must be 1-16777215"
    for v in "${VLANS[@]}"; do [[ $v != "$vlan" ]] || tw_die "--tenant: VLAN $vlan given twice"; done
    for v in "${VNIS[@]}"; do [[ $v != "$vni" ]] || tw_die "--tenant: VNI $vni given twice"; done
    VLANS+=("$vlan") VNIS+=("$vni")
done
[[ $CMD != up ]] || ((${#VLANS[@]})) || tw_die "up needs at least one --tenant VLAN[:VNI]"

tw_require_root
for ns in "${NSS[@]}"; do
    ip netns list | awk '{print $1}' | grep -qx -- "$ns" || tw_die "no network namespace '$ns'"
done

# ---------------------------------------------------------------- down / show

# ours NS: the interfaces `up` made in NS (alias $ALIAS), bridges last.
ours() {
    ip -n "$1" -d -o link show | awk -v a="$ALIAS" '
        { name = $2; sub(/:$/, "", name); sub(/@.*/, "", name) }
        $0 ~ "alias " a "( |$)" { if ($0 ~ / bridge /) br = br " " name; else print name }
        END { n = split(br, b, " "); for (i = 1; i <= n; i++) print b[i] }'
}

down() {
    local ns ifc
    for ns in "${NSS[@]}"; do
        for ifc in $(ours "$ns"); do
            # Deleting one end of the veth removes the other end too.
            ip -n "$ns" link del dev "$ifc" 2>/dev/null || true
        done
    done
}

show() {
    local ns
    for ns in "${NSS[@]}"; do
        echo "== $ns: bridge ports"
        bridge -n "$ns" link show
        echo "== $ns: bridge VLANs"
        bridge -n "$ns" vlan show 2>&1
        echo "== $ns: VXLAN devices"
        ip -n "$ns" -d -o link show type vxlan | sed 's/  */ /g'
        for ifc in $(ip -n "$ns" -o link show type vxlan | awk '{ n = $2; sub(/:$/, "", n); sub(/@.*/, "", n); print n }'); do
            echo "== $ns: forwarding entries of $ifc"
            bridge -n "$ns" fdb show dev "$ifc"
        done
    done
}

case $CMD in
    down) down; tw_log "removed the tenant underlay between ${NSS[0]} and ${NSS[1]}"; exit 0 ;;
    show) show; exit 0 ;;
esac

# ---------------------------------------------------------------- up

# Undo a half-built underlay when a step fails.
undo_on_failure() {
    local rc=$?
    ((rc == 0)) || down
    exit "$rc"
}
trap undo_on_failure EXIT

# ensure_bridge NS NAME FILTERING: NAME exists in NS, up, with VLAN filtering when FILTERING is 1.
ensure_bridge() {
    local ns=$1 br=$2 filtering=$3
    if ! ip -n "$ns" link show dev "$br" >/dev/null 2>&1; then
        ip -n "$ns" link add "$br" type bridge
        ip -n "$ns" link set dev "$br" alias "$ALIAS"
    fi
    ip -n "$ns" -d link show dev "$br" | grep -q ' bridge ' || tw_die "$br in $ns is not a bridge"
    if ((filtering)) && ! ip -n "$ns" link set dev "$br" type bridge vlan_filtering 1 2>/dev/null; then
        tw_die "the kernel ($(uname -r)) cannot filter VLANs on a bridge (no CONFIG_BRIDGE_VLAN_FILTERING): use --tenant-bridges PREFIX"
    fi
    ip -n "$ns" link set dev "$br" up
}

# access_port NS IFC VLAN: IFC carries only VLAN, untagged, as its PVID.
access_port() {
    bridge -n "$1" vlan add dev "$2" vid "$3" pvid untagged
    bridge -n "$1" vlan del dev "$2" vid 1 2>/dev/null || true
}

ip -n "${NSS[0]}" link show dev "$LINK" >/dev/null 2>&1 && tw_die "$LINK already exists in ${NSS[0]} (down first)"
ip -n "${NSS[1]}" link show dev "$LINK" >/dev/null 2>&1 && tw_die "$LINK already exists in ${NSS[1]} (down first)"
for ns in "${NSS[@]}"; do
    if [[ -n $TENANT_BRIDGES ]]; then
        for vlan in "${VLANS[@]}"; do ensure_bridge "$ns" "$TENANT_BRIDGES$vlan" 0; done
    else
        ensure_bridge "$ns" "$BRIDGE" 1
    fi
done
ip -n "${NSS[0]}" link add "$LINK" type veth peer name "$LINK" netns "${NSS[1]}"
IPS=("$UL_IP1" "$UL_IP2")
for i in 0 1; do
    ns=${NSS[i]}
    ip -n "$ns" link set dev "$LINK" alias "$ALIAS"
    case $UNDERLAY in
    vlan)
        ip -n "$ns" link set dev "$LINK" master "$BRIDGE" up
        for vlan in "${VLANS[@]}"; do bridge -n "$ns" vlan add dev "$LINK" vid "$vlan"; done
        bridge -n "$ns" vlan del dev "$LINK" vid 1 2>/dev/null || true
        ;;
    vxlan)
        ip -n "$ns" link set dev "$LINK" mtu $((TENANT_MTU + VXLAN_OVERHEAD)) up
        ip -n "$ns" addr add "${IPS[i]}/$UL_PREFIX" dev "$LINK"
        for j in "${!VLANS[@]}"; do
            vx=vx${VLANS[j]}
            ip -n "$ns" link show dev "$vx" >/dev/null 2>&1 && tw_die "$vx already exists in $ns"
            # nolearning: the only remote is the other host (the default destination), so the
            # tunnel needs no learnt entries; the bridge still learns which MACs are behind it.
            ip -n "$ns" link add "$vx" type vxlan id "${VNIS[j]}" local "${IPS[i]}" remote "${IPS[1 - i]}" \
                dstport "$VXLAN_PORT" dev "$LINK" nolearning
            ip -n "$ns" link set dev "$vx" alias "$ALIAS" mtu "$TENANT_MTU"
            if [[ -n $TENANT_BRIDGES ]]; then
                ip -n "$ns" link set dev "$vx" master "$TENANT_BRIDGES${VLANS[j]}" up
            else
                ip -n "$ns" link set dev "$vx" master "$BRIDGE" up
                access_port "$ns" "$vx" "${VLANS[j]}"
            fi
        done
        ;;
    esac
done
trap - EXIT
desc=
for j in "${!VLANS[@]}"; do
    if [[ $UNDERLAY == vxlan ]]; then desc+=" VLAN ${VLANS[j]}=VNI ${VNIS[j]}"; else desc+=" VLAN ${VLANS[j]}"; fi
done
tw_log "$UNDERLAY underlay $LINK between ${NSS[0]} and ${NSS[1]}:$desc"
