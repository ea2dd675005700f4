#!/usr/bin/env bash
# Build the end-to-end test guest: Debian's 6.12 cloud kernel (boots in a few
# seconds under TCG, unlike the generic kernel) plus a small initramfs with
# busybox, iperf3, ethtool, tcpdump and Fixtures/guest/init.
#
# Usage: Tools/guest-image.sh [--force] [--refresh-kernel] [OUTDIR]
#   OUTDIR defaults to ${TAPWIRE_GUEST_DIR:-/var/tmp/tapwire-guest}.
# Outputs: OUTDIR/vmlinuz, OUTDIR/initramfs.cpio.gz, OUTDIR/kernel-package.
# The fetched kernel is cached in OUTDIR/kernel/ so a change to the guest
# fixtures only repacks the initramfs.
set -euo pipefail

. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

usage() { sed -n '2,10s/^# \{0,1\}//p' "$0"; }

FORCE=0
REFRESH_KERNEL=0
OUT=
while (($#)); do
    case $1 in
        --force) FORCE=1 ;;
        --refresh-kernel) REFRESH_KERNEL=1 ;;
        -h | --help) usage; exit 0 ;;
        -*) usage >&2; tw_die "unknown option $1" ;;
        *) [[ -z $OUT ]] || tw_die "only one OUTDIR"; OUT=$1 ;;
    esac
    shift
done
OUT=${OUT:-$(tw_guest_dir)}

FIXTURES=$TW_REPO_ROOT/Fixtures/guest
KERNEL_CACHE=$OUT/kernel
# Loaded in this order by the guest's /init.
MODULES=(failover net_failover virtio_net)

tw_require_root
[[ -f $FIXTURES/init ]] || tw_die "missing $FIXTURES/init"

# up_to_date: both outputs exist and are newer than every input we pack.
up_to_date() {
    local f out
    for out in "$OUT/vmlinuz" "$OUT/initramfs.cpio.gz"; do
        [[ -s $out ]] || return 1
        for f in "$FIXTURES"/* "$0"; do
            [[ $out -nt $f ]] || return 1
        done
    done
}

if ((!FORCE && !REFRESH_KERNEL)) && up_to_date; then
    tw_log "up to date: $OUT/vmlinuz, $OUT/initramfs.cpio.gz ($(cat "$OUT/kernel-package" 2>/dev/null || echo unknown kernel))"
    exit 0
fi

tw_ensure_packages \
    dpkg:busybox-static cpio:cpio iperf3:iperf3 ethtool:ethtool tcpdump:tcpdump \
    xz:xz-utils gzip:gzip ldd:libc-bin dpkg-deb:dpkg
mkdir -p "$OUT"

WORK=$(mktemp -d "$OUT/.build.XXXXXX")
tw_install_traps
tw_at_exit "rm -rf '$WORK'"

# ---------------------------------------------------------------- kernel

# fetch_kernel: download the newest 6.12 cloud kernel package and keep only
# what the guest needs (vmlinuz and the three NIC modules, decompressed).
fetch_kernel() {
    local pkg deb x mod src
    tw_log "looking up the newest linux-image-6.12.*-cloud-amd64-unsigned (apt-get update)"
    apt-get update -qq >&2
    pkg=$(apt-cache search --names-only '^linux-image-6\.12\..*-cloud-amd64-unsigned$' |
        awk '{print $1}' | sort -V | tail -n 1)
    [[ -n $pkg ]] || tw_die "no linux-image-6.12.*-cloud-amd64-unsigned in the apt sources (bookworm-security/updates needed)"

    if [[ -f $KERNEL_CACHE/package && $(cat "$KERNEL_CACHE/package") == "$pkg" && $FORCE == 0 ]]; then
        tw_log "kernel cache already holds $pkg"
        return 0
    fi

    tw_log "downloading $pkg"
    mkdir -p "$WORK/deb"
    # apt drops privileges to _apt for downloads; let it write here.
    if id _apt >/dev/null 2>&1; then chmod 755 "$WORK"; chown _apt "$WORK/deb"; fi
    (cd "$WORK/deb" && apt-get download -qq "$pkg" >&2)
    deb=$(ls "$WORK"/deb/*.deb)
    x=$WORK/deb/x
    dpkg-deb -x "$deb" "$x"

    rm -rf "$KERNEL_CACHE.new"
    mkdir -p "$KERNEL_CACHE.new"
    src=$(find "$x/boot" -name 'vmlinuz-*' | head -n 1)
    [[ -n $src ]] || tw_die "$pkg has no /boot/vmlinuz-*"
    cp "$src" "$KERNEL_CACHE.new/vmlinuz"
    for mod in "${MODULES[@]}"; do
        src=$(find "$x" -path '*/modules/*' -name "$mod.ko.xz" | head -n 1)
        [[ -n $src ]] || tw_die "$pkg has no $mod.ko.xz"
        xz -dc "$src" >"$KERNEL_CACHE.new/$mod.ko"
    done
    echo "$pkg" >"$KERNEL_CACHE.new/package"
    # Swap in atomically so an interrupted fetch never leaves half a cache.
    rm -rf "$KERNEL_CACHE"
    mv "$KERNEL_CACHE.new" "$KERNEL_CACHE"
    tw_log "kernel cached in $KERNEL_CACHE ($(du -sh "$deb" | cut -f1) package)"
}

have_kernel_cache() {
    local mod
    [[ -s $KERNEL_CACHE/vmlinuz && -s $KERNEL_CACHE/package ]] || return 1
    for mod in "${MODULES[@]}"; do [[ -s $KERNEL_CACHE/$mod.ko ]] || return 1; done
}

if ((FORCE || REFRESH_KERNEL)) || ! have_kernel_cache; then
    fetch_kernel
else
    tw_log "using cached kernel $(cat "$KERNEL_CACHE/package") (--refresh-kernel to look for a newer one)"
fi

# ---------------------------------------------------------------- initramfs

ROOTFS=$WORK/rootfs
mkdir -p "$ROOTFS"/{bin,sbin,usr/bin,usr/sbin,lib/modules,proc,sys,dev,tmp,run,etc,root}
chmod 1777 "$ROOTFS/tmp"

# Busybox (static) provides the shell, ip, ping, mount, insmod, ...
cp /bin/busybox "$ROOTFS/bin/busybox"
busybox --list-full | while read -r applet; do
    [[ -e $ROOTFS/$applet || -L $ROOTFS/$applet ]] && continue
    mkdir -p "$ROOTFS/$(dirname "$applet")"
    ln -s /bin/busybox "$ROOTFS/$applet"
done

# copy_with_libs BIN DEST: a dynamically linked host binary plus every
# library ldd names, at the same paths, so the guest's loader finds them.
copy_with_libs() {
    local bin=$1 dest=$2 lib
    rm -f "$ROOTFS$dest"   # may be a busybox applet link
    cp -L "$bin" "$ROOTFS$dest"
    for lib in $(ldd "$bin" | grep -o '/[^ ]*'); do
        [[ -e $ROOTFS$lib ]] && continue
        mkdir -p "$ROOTFS$(dirname "$lib")"
        cp -L "$lib" "$ROOTFS$lib"
    done
}
copy_with_libs "$(command -v iperf3)" /usr/bin/iperf3
copy_with_libs "$(command -v ethtool)" /usr/sbin/ethtool
# What a guest sees on its wire (Tools/tenant-check.sh counts foreign frames with it); run it
# with -Z root: the guest has no tcpdump user to drop to.
copy_with_libs "$(command -v tcpdump)" /usr/bin/tcpdump

for mod in "${MODULES[@]}"; do
    cp "$KERNEL_CACHE/$mod.ko" "$ROOTFS/lib/modules/$mod.ko"
done

# The kernel opens /dev/console for /init before anything is mounted.
mknod -m 600 "$ROOTFS/dev/console" c 5 1
mknod -m 666 "$ROOTFS/dev/null" c 1 3

install -m 755 "$FIXTURES/init" "$ROOTFS/init"
# Anything else in Fixtures/guest/ goes to /etc/tapwire/ for tw.pre/tw.cmd use.
for f in "$FIXTURES"/*; do
    [[ $(basename "$f") == init ]] && continue
    mkdir -p "$ROOTFS/etc/tapwire"
    cp -a "$f" "$ROOTFS/etc/tapwire/"
done
echo "root:x:0:0:root:/root:/bin/sh" >"$ROOTFS/etc/passwd"
echo "root:x:0:" >"$ROOTFS/etc/group"
{
    echo "kernel: $(cat "$KERNEL_CACHE/package")"
    echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "iperf3: $(iperf3 --version | head -n 1)"
} >"$ROOTFS/etc/tapwire-guest"

# Sorted, owner-normalised archive: same inputs give the same listing.
(cd "$ROOTFS" && find . -mindepth 1 -print0 | LC_ALL=C sort -z |
    cpio --null -o -H newc -R 0:0 --quiet) | gzip -6 >"$WORK/initramfs.cpio.gz"

# Publish: the initramfs last, so up_to_date only passes on a complete build.
cp "$KERNEL_CACHE/vmlinuz" "$OUT/vmlinuz.new" && mv "$OUT/vmlinuz.new" "$OUT/vmlinuz"
cp "$KERNEL_CACHE/package" "$OUT/kernel-package"
mv "$WORK/initramfs.cpio.gz" "$OUT/initramfs.cpio.gz"

tw_log "built $OUT/vmlinuz ($(du -h "$OUT/vmlinuz" | cut -f1), $(cat "$OUT/kernel-package"))"
tw_log "built $OUT/initramfs.cpio.gz ($(du -h "$OUT/initramfs.cpio.gz" | cut -f1), $(find "$ROOTFS" -mindepth 1 | wc -l) entries: busybox, iperf3, ethtool, tcpdump, ${MODULES[*]})"
