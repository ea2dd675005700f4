#!/usr/bin/env bash
# Builds the Debian package: tapwire_VERSION_amd64.deb from a staged tree with dpkg-deb.
#
# Usage: Tools/packaging/build-deb.sh [--out DIR] [--no-build]
#   --out DIR    where the .deb goes (default .build-pkg/deb under the repo root)
#   --no-build   package what is already built (.build/release and .build-pkg/manual)
# Prints the .deb's path on stdout (progress goes to stderr).
#
# The binaries are `make release`'s (Tools/build-release.sh: --static-swift-stdlib, the Swift
# runtime, standard library and Foundation linked in), so the package depends only on Debian
# libraries (Depends from dpkg-shlibdeps) and ships the binaries every check ran. The manual pages come from swift-argument-parser's
# generate-manual (the tool of its generate-manual plugin), the completions from
# --generate-completion-script, the version from
# `tapwire --version`. Manual pages, staging and the .deb go to .build-pkg.
# Environment: TAPWIRE_MAINTAINER "Name <email>" for the Maintainer field; SOURCE_DATE_EPOCH
# for the changelog date and the files' times (default: the last commit's time).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$HERE/../lib/common.sh"
TW_LOG_PREFIX=build-deb

SCRATCH=$TW_REPO_ROOT/.build-pkg
OUT=$SCRATCH/deb
BUILD=1
while (($#)); do
    case $1 in
        --out) (($# >= 2)) || tw_die "--out needs a directory"; OUT=$2; shift ;;
        --no-build) BUILD=0 ;;
        -h | --help) sed -n '2,/^set -euo/s/^# \{0,1\}//p' "$0" | sed '$d'; exit 0 ;;
        *) tw_die "unknown argument: $1 (see --help)" ;;
    esac
    shift
done

tw_ensure_packages dpkg-deb:dpkg dpkg-shlibdeps:dpkg-dev strip:binutils patchelf:patchelf gzip:gzip jq:jq
command -v swift >/dev/null || tw_die "no swift in PATH"

SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$TW_REPO_ROOT" log -1 --format=%ct 2>/dev/null || date +%s)}
export SOURCE_DATE_EPOCH
MAINTAINER=${TAPWIRE_MAINTAINER:-"tapwire maintainers <$(git -C "$TW_REPO_ROOT" log -1 --format=%ae 2>/dev/null || echo root@localhost)>"}
PRODUCTS=(tapwire tapwirectl tapwire-perf)
BIN=$TW_REPO_ROOT/.build/release
MAN_OUT=$SCRATCH/manual

# swift_retry CMD...: other people edit the tree while it builds; SwiftPM then stops with
# "was modified during the build". Try again (up to three times) in that case only.
swift_retry() {
    local i log
    log=$(mktemp)
    for i in 1 2 3; do
        if (cd "$TW_REPO_ROOT" && "$@") >"$log" 2>&1; then rm -f "$log"; return 0; fi
        if ! grep -q 'modified during the build' "$log"; then break; fi
        tw_warn "sources changed during the build, trying again ($i)"
    done
    grep -v ': warning:' "$log" | tail -n 40 >&2
    rm -f "$log"
    return 1
}

if ((BUILD)); then
    tw_log "binaries: Tools/build-release.sh (several minutes unless make release ran)"
    "$TW_REPO_ROOT/Tools/build-release.sh" || tw_die "the release build failed"
    # Manual pages: swift-argument-parser's generate-manual, the tool its generate-manual
    # plugin runs (`swift package generate-manual`), run here on the binaries just built:
    # the plugin itself first rebuilds every product without --static-swift-stdlib,
    # which would cost a second full build and replace these binaries.
    tw_log "manual pages: swift-argument-parser's generate-manual"
    swift_retry swift build --product generate-manual ||
        tw_die "building generate-manual failed"
    GENERATE_MANUAL=$(cd "$TW_REPO_ROOT" && swift build --product generate-manual --show-bin-path)/generate-manual
    rm -rf "$MAN_OUT"
    for p in "${PRODUCTS[@]}"; do
        mkdir -p "$MAN_OUT/$p"
        "$GENERATE_MANUAL" "$BIN/$p" --date "$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%d)" \
            --output-directory "$MAN_OUT/$p" >&2 || tw_die "generate-manual $p failed"
    done
fi

for p in "${PRODUCTS[@]}"; do
    [[ -x $BIN/$p ]] || tw_die "no $BIN/$p (run without --no-build)"
    [[ -s $MAN_OUT/$p/$p.1 ]] || tw_die "no manual page $MAN_OUT/$p/$p.1 (run without --no-build)"
    # Only Debian's libraries: nothing from the Swift toolchain.
    if ldd "$BIN/$p" | grep -Eq 'libswift|libFoundation|libdispatch|libBlocksRuntime|not found'; then
        ldd "$BIN/$p" >&2
        tw_die "$p links the Swift runtime dynamically (build it with --static-swift-stdlib)"
    fi
done

VERSION=$("$BIN/tapwire" --version)
[[ $VERSION =~ ^[0-9][0-9A-Za-z.+~-]*$ ]] || tw_die "tapwire --version printed '$VERSION', not a version"
ARCH=$(dpkg --print-architecture)

STAGE=$SCRATCH/deb-root
rm -rf "$STAGE"
mkdir -p "$STAGE"
tw_log "staging tapwire $VERSION ($ARCH) in $STAGE"

# Binaries, stripped of their debug information and symbol tables (lintian:
# unstripped-binary-or-object) and of the RUNPATH into the toolchain the Swift driver adds
# even with the static standard library (lintian: custom-library-search-path).
install -d "$STAGE/usr/bin"
for p in "${PRODUCTS[@]}"; do
    install -m 0755 "$BIN/$p" "$STAGE/usr/bin/$p"
    strip --remove-section=.comment --remove-section=.note --strip-unneeded "$STAGE/usr/bin/$p"
    patchelf --remove-rpath "$STAGE/usr/bin/$p"
    ! readelf -d "$STAGE/usr/bin/$p" | grep -Eq 'R(UN)?PATH' || tw_die "$p still has an rpath"
done
[[ $("$STAGE/usr/bin/tapwire" --version) == "$VERSION" ]] || tw_die "the stripped tapwire does not run"

# Manual pages (from the argument parser) and completions (from the binaries themselves).
install -d "$STAGE/usr/share/man/man1" "$STAGE/usr/share/bash-completion/completions" \
    "$STAGE/usr/share/zsh/vendor-completions"
for p in "${PRODUCTS[@]}"; do
    # A blank line in a discussion becomes a paragraph break (groff warns about blank lines).
    sed 's/^$/.Pp/' "$MAN_OUT/$p/$p.1" | gzip -9n >"$STAGE/usr/share/man/man1/$p.1.gz"
    # Sourced by bash-completion, not run: no #! line (lintian: bash-completion-with-hashbang).
    "$STAGE/usr/bin/$p" --generate-completion-script bash | sed '1{/^#!/d}' \
        >"$STAGE/usr/share/bash-completion/completions/$p"
    "$STAGE/usr/bin/$p" --generate-completion-script zsh >"$STAGE/usr/share/zsh/vendor-completions/_$p"
    [[ -s $STAGE/usr/share/bash-completion/completions/$p && -s $STAGE/usr/share/zsh/vendor-completions/_$p ]] ||
        tw_die "$p printed no completion script"
done

# systemd units (bookworm's place for a package's units), the example instance config, the
# QEMU vhost-user backend descriptor.
install -D -m 0644 "$HERE/tapwire@.service" "$STAGE/lib/systemd/system/tapwire@.service"
install -D -m 0644 "$HERE/tapwire@.socket" "$STAGE/lib/systemd/system/tapwire@.socket"
install -D -m 0644 "$HERE/example.json" "$STAGE/etc/tapwire/example.json"
jq -e '.type == "net" and (.binary | startswith("/"))' "$HERE/50-tapwire.json" >/dev/null ||
    tw_die "50-tapwire.json is not a net backend descriptor"
install -D -m 0644 "$HERE/50-tapwire.json" "$STAGE/usr/share/qemu/vhost-user/50-tapwire.json"

# Documentation: README, copyright (Debian's machine-readable format), changelog.
DOC=$STAGE/usr/share/doc/tapwire
install -d "$DOC"
gzip -9n <"$TW_REPO_ROOT/README.md" >"$DOC/README.md.gz"
sed "s|@MAINTAINER@|$MAINTAINER|g" "$HERE/debian/copyright" >"$DOC/copyright"
chmod 0644 "$DOC/copyright"
sed -e "s|@VERSION@|$VERSION|g" -e "s|@MAINTAINER@|$MAINTAINER|g" \
    -e "s|@DATE@|$(date -u -R -d "@$SOURCE_DATE_EPOCH")|g" "$HERE/debian/changelog.in" |
    gzip -9n >"$DOC/changelog.gz"

# Control data. Depends: what the binaries link, from dpkg-shlibdeps (it wants a
# debian/control beside it, hence the scratch folder).
SHLIBS=$SCRATCH/shlibdeps
rm -rf "$SHLIBS"
mkdir -p "$SHLIBS/debian"
printf 'Source: tapwire\n\nPackage: tapwire\nArchitecture: any\n' >"$SHLIBS/debian/control"
DEPENDS=$(cd "$SHLIBS" && dpkg-shlibdeps -O "${PRODUCTS[@]/#/$STAGE/usr/bin/}" 2>/dev/null | sed -n 's/^shlibs:Depends=//p')
[[ -n $DEPENDS ]] || tw_die "dpkg-shlibdeps found no dependencies"
rm -rf "$SHLIBS"

install -d "$STAGE/DEBIAN"
INSTALLED_SIZE=$(du -sk --exclude=DEBIAN "$STAGE" | cut -f1)
sed -e "s|@VERSION@|$VERSION|g" -e "s|@ARCH@|$ARCH|g" -e "s|@MAINTAINER@|$MAINTAINER|g" \
    -e "s|@INSTALLED_SIZE@|$INSTALLED_SIZE|g" -e "s|@DEPENDS@|$DEPENDS|g" \
    "$HERE/debian/control.in" >"$STAGE/DEBIAN/control"
install -m 0644 "$HERE/debian/conffiles" "$STAGE/DEBIAN/conffiles"
for s in postinst prerm postrm; do install -m 0755 "$HERE/debian/$s" "$STAGE/DEBIAN/$s"; done
(cd "$STAGE" && find . -type f ! -path './DEBIAN/*' -printf '%P\0' | LC_ALL=C sort -z | xargs -0 md5sum) \
    >"$STAGE/DEBIAN/md5sums"
chmod 0644 "$STAGE/DEBIAN/md5sums" "$STAGE/DEBIAN/control"

# Directories 0755, files 0644 but the executables, all times the same.
find "$STAGE" -type d -exec chmod 0755 {} +
find "$STAGE" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
DEB=$OUT/tapwire_${VERSION}_${ARCH}.deb
dpkg-deb --root-owner-group -Zxz --build "$STAGE" "$DEB" >&2
tw_log "built $DEB ($(du -h "$DEB" | cut -f1))"
echo "$DEB"
