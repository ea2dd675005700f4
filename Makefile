# tapwire: build, test and demo entry points. `make test` and `make demo` work on a fresh
# Debian 12 machine with a Swift 6 toolchain: they install what they need first.
SHELL := /bin/bash
SWIFT ?= swift
RELEASE_BIN := .build/release/tapwire

.PHONY: all deps build release test suites unit e2e matrix demo deb fuzz fuzz-smoke sanitizers soak bench bench-alloc clean
FUZZ_SECONDS ?= 600

all: build

deps:
	@Tools/install-deps.sh

build: deps
	$(SWIFT) build

# Built the way the Debian package ships them (Swift runtime linked in), so the checks run
# the very binaries `make deb` packages and the package needs no build of its own.
release: deps
	@Tools/build-release.sh

# Everything: unit, protocol and real-TAP suites (Swift Testing), fuzz smoke, sanitizers, the
# allocation check, then every frontend users run against tapwire (real QEMU 7.2 and 10 guests,
# libvirt, DPDK, live migration), the operator and sandbox checks, restart survival, rate
# limits, and the Debian package installed, used and purged.
test: deps
	@Tools/stage.sh --reset
	@Tools/stage.sh "unit, protocol and TAP tests" $(MAKE) --no-print-directory suites
	@Tools/stage.sh "fuzz smoke: the message codec, the split and packed descriptor-chain walkers and the port-security classifier, 60 s each" \
		$(MAKE) --no-print-directory fuzz-smoke
	@Tools/stage.sh "the suites under AddressSanitizer and ThreadSanitizer" $(MAKE) --no-print-directory sanitizers
	@Tools/stage.sh "no allocation on the packet path (malloc counts per frame, steady state)" \
		$(MAKE) --no-print-directory bench-alloc
	@Tools/stage.sh "the release binaries, as the package ships them" $(MAKE) --no-print-directory release
	@Tools/stage.sh "the frontend matrix: QEMU 7.2 and 10.0 guests, multiqueue and hot-plug, libvirt 11.3, DPDK virtio-user, live migration, tenant isolation" \
		Tools/frontend-matrix.sh --tapwire $(RELEASE_BIN) --markdown .build/tested-with.md
	@Tools/stage.sh "operator checks: CapEff, tapwirectl, API errors, unprivileged run" Tools/control-check.sh
	@Tools/stage.sh "the sandbox: seccomp, no_new_privs, limits; the fuzz corpus replayed into the real binary" \
		Tools/seccomp-check.sh
	@Tools/stage.sh "restart survival: SIGKILL/SIGTERM under a running guest, new QEMU, client mode" \
		Tools/reconnect-check.sh --tapwire $(RELEASE_BIN)
	@Tools/stage.sh "rate limits on a real TAP: 10 Mbit/s, 200 Mbit/s, 2 Gbit/s within 3%, no frame lost" \
		Tools/ratelimit-check.sh --no-cost
	@Tools/stage.sh "rate limits with a real guest" Tools/ratelimit-guest.sh --tapwire $(RELEASE_BIN) --time 6
	@Tools/stage.sh "the Debian package: lintian, install, units, socket activation and real guests through /usr/bin/tapwire, purge" \
		Tools/package-check.sh
	@echo "== make test passed; minutes per stage:"
	@Tools/stage.sh --summary

# The Swift suites (unit, protocol, real TAP) in a private network namespace (loopback up:
# Foundation needs it), so the bridges, veths and frames the TAP tests make never meet the
# host's interfaces. --no-parallel: some tests compare the process's descriptor count before
# and after.
suites: deps
	$(SWIFT) build --build-tests
	TAPWIRE_TEST_NETNS=1 unshare --net -- sh -c 'ip link set lo up && exec $(SWIFT) test --skip-build --no-parallel' 2>&1 | tee .build/test-output.txt; test $${PIPESTATUS[0]} -eq 0

unit: deps
	$(SWIFT) test

e2e: release
	Tools/e2e.sh --backend tapwire --tapwire $(RELEASE_BIN)

# The frontend matrix alone (the README's "Tested with" table).
matrix: release
	Tools/frontend-matrix.sh --tapwire $(RELEASE_BIN) --markdown .build/tested-with.md

# The main job: boot a real guest through tapwire and show it working.
demo: release
	@Tools/demo.sh $(RELEASE_BIN)

# The Debian package (.build-pkg/deb/tapwire_VERSION_amd64.deb): `make release`'s binaries (the Swift
# runtime linked in), man pages, completions, systemd units, QEMU's vhost-user descriptor.
deb: deps
	Tools/packaging/build-deb.sh

# libFuzzer on the message codec, the descriptor-chain walker and the port-security classifier (seeds in Fixtures/fuzz).
fuzz: deps
	Tools/fuzz/run.sh --seconds $(FUZZ_SECONDS) --target all --parallel

fuzz-smoke: deps
	Tools/fuzz/run.sh --seconds 60 --target all --parallel --no-coverage

# The Swift suites built and run under ASan and under TSan (own scratch paths).
sanitizers: deps
	Tools/sanitizers.sh all --serial

# Benchmarks (figures, not pass/fail): DPDK's vhost+TAP path against tapwire under the same
# DPDK frontend, latency, the limiter's cost, and a real guest against QEMU's own TAP backend;
# first the allocation count of the packet path, which does fail if a frame allocates.
bench: release bench-alloc
	Tools/install-deps.sh --bench
	Tools/bench-dpdk.sh --nice -19
	Tools/latency.sh --nice -19
	Tools/ratelimit-check.sh --nice -19
	Tools/guest-bench.sh --rounds 3

# Mallocs per frame on the packet path (Tools/Benchmarks, ordo-one/benchmark): guest transmit
# to the sink and to a TAP (io_uring and writev), host to guest from the TAP. Fails if any
# steady-state iteration allocates. In a private network namespace; needs root.
bench-alloc: deps
	Tools/bench-alloc.sh

# About ten minutes of connect/traffic/disconnect cycles against one tapwire.
soak: release
	Tools/soak.sh --cycles 400 --minutes 10

clean:
	rm -rf .build .build-* Tools/Benchmarks/.build
