# thinsnap: one purpose per target. `make demo` and `make test` are the two
# commands a new user needs; everything else is a building block.

CARGO      ?= cargo
VM         := target/debug/thinsnap-vm
THINSNAP   := target/debug/thinsnap

# Debian packages the build, the tests and the VM need.
DEB_PACKAGES := libdevmapper-dev libclang-dev pkg-config qemu-system-x86 \
	busybox-static xfsprogs e2fsprogs btrfs-progs thin-provisioning-tools \
	lvm2 dmsetup kmod cpio util-linux protobuf-compiler \
	containerd runc docker.io

.PHONY: all setup packages build lint fmt clippy test test-unit test-host \
	test-vm demo bench fuzz clean

all: build

## setup: install what builds and tests need, fetch the VM kernel (idempotent).
setup: packages
	$(CARGO) build --quiet --bin thinsnap-vm
	$(VM) prepare

packages:
	@missing=""; for p in $(DEB_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

build:
	$(CARGO) build --bins

fmt:
	$(CARGO) fmt

## lint: rustfmt and clippy with warnings as errors (part of `make test`).
lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets --features vm-tests --quiet -- -D warnings

## test: everything, in three kinds: unit (no root), host root, VM (dm-thin).
test: setup lint test-unit test-host test-vm
	@echo "make test: all test kinds passed"

test-unit:
	$(CARGO) test --lib --bins

test-host:
	$(CARGO) test --test 'host_*'

# Two raw disks for vm_directlvm (/dev/vda blank, /dev/vdb gets ext4);
# sparse files, so they cost no space until written.
test-vm: $(VM)
	$(VM) test --disk 1G --disk 256M

$(VM):
	$(CARGO) build --quiet --bin thinsnap-vm

## demo: the main job, in the VM when the host kernel has no dm-thin.
demo: setup
	$(CARGO) build --quiet --bins
	$(THINSNAP) doctor || true
	$(VM) script fixtures/demo.steps --no-leak-check

# Benchmarks (not tests): release build, one VM boot for every subject,
# then the report. BENCH_ARGS=--quick for a short run. BENCH_ONLY=dm (or
# grpc, workload, backends, scaling) re-measures those scenarios in a new
# boot; the report replaces them and says so.
BENCH_LOG := target/bench/vm-output.log
# Every subject's pool lives in the VM's RAM (tmpfs); 500 Docker devices
# with their xfs logs outgrow the default 4 GiB.
BENCH_VM_MEM ?= 12288
bench: setup
	$(CARGO) build --release --bin thinsnap --bin thinsnap-bench
	$(CARGO) build --quiet --bin thinsnap-vm
	mkdir -p target/bench
ifeq ($(BENCH_ONLY),)
	THINSNAP_VM_MEM=$(BENCH_VM_MEM) $(VM) run --timeout 5400 --step-timeout 5400 -- target/release/thinsnap-bench run $(BENCH_ARGS) > $(BENCH_LOG)
	rm -f target/bench/rerun-*.log
else
	THINSNAP_VM_MEM=$(BENCH_VM_MEM) $(VM) run --timeout 5400 --step-timeout 5400 -- target/release/thinsnap-bench run $(BENCH_ARGS) --only $(BENCH_ONLY) > target/bench/rerun-$(BENCH_ONLY).log
endif
	target/release/thinsnap-bench report $(BENCH_LOG) $$(ls target/bench/rerun-*.log 2>/dev/null) --md docs/benchmarks.md --svg docs/benchmarks.svg

# Fuzzing (not a test): nightly + cargo-fuzz, each target for FUZZ_SECONDS,
# seeded from fuzz/corpus (new finds go to target/fuzz-corpus, not git).
# A crash is copied to fuzz/regressions/<target>/, which `make test`
# replays (tests/host_fuzz_regressions.rs), and fails the run.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := metadata_parser storage_options tar_applier
fuzz: packages
	rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
	command -v cargo-fuzz >/dev/null 2>&1 || $(CARGO) install cargo-fuzz --locked
	@set -e; for t in $(FUZZ_TARGETS); do \
		mkdir -p target/fuzz-corpus/$$t fuzz/regressions/$$t; \
		echo "fuzz: $$t for $(FUZZ_SECONDS) s"; \
		if ! (cd fuzz && cargo +nightly fuzz run $$t ../target/fuzz-corpus/$$t corpus/$$t -- \
			-max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=4096 -timeout=30); then \
			cp fuzz/artifacts/$$t/* fuzz/regressions/$$t/ 2>/dev/null || true; \
			echo "fuzz: $$t found a crash; it is now in fuzz/regressions/$$t (make test replays it)"; \
			exit 1; \
		fi; \
	done

clean:
	$(CARGO) clean
