# Crucible in C++: build, test and run entry points. See README.md.
#   make            release build with debug info; binaries in build/bin/
#   make test       build and run every test (unit, simulation, end to end)
#   make run        three local downstairs + disk.img mounted at ./mnt
#   make deps       install the Debian packages (as root; quiet when present)
#   make asan|tsan  unit and simulation tests under ASan+UBSan; threaded unit tests under TSan
#   make fuzz       libFuzzer: the decoder, the downstairs and upstairs cores (FUZZ_SECONDS each)
#   make install    PREFIX (/usr/local) and DESTDIR; make deb: a Debian package in build/deb
#   make format|format-check|lint|check-headers|check-layers|bench|clean
SHELL := /bin/bash
.DEFAULT_GOAL := all
.SUFFIXES:
.DELETE_ON_ERROR:

MODE ?= release
ifeq ($(MODE),release)
  BUILD := build
  MODE_FLAGS := -O2 -g
else ifeq ($(MODE),asan)
  BUILD := build-asan
  # -g1 (line tables): what a sanitizer report needs, at two thirds of -g's compile time.
  MODE_FLAGS := -O1 -g1 -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
  # GCC 12 reports false maybe-uninitialized warnings inside libstdc++ (std::regex,
  # std::function) when sanitizers instrument it; with -Werror in CI they would fail the build.
  MODE_FLAGS += -Wno-maybe-uninitialized
else ifeq ($(MODE),tsan)
  BUILD := build-tsan
  # GCC 12 warns (-Wtsan) that TSan does not model std::atomic_thread_fence, which asio's
  # handler completion uses; a race hidden there would only be missed, and with -Werror in
  # CI the warning would fail the build.
  MODE_FLAGS := -O1 -g1 -fsanitize=thread -Wno-maybe-uninitialized -Wno-tsan
else
  $(error MODE must be release, asan or tsan, not '$(MODE)')
endif

CXX := g++
WARNINGS := -Wall -Wextra -Wpedantic -Wshadow -Wconversion -Wno-sign-conversion \
  -Wnon-virtual-dtor -Woverloaded-virtual -Wimplicit-fallthrough -Wformat=2
ifeq ($(CI),true)
  WARNINGS += -Werror
endif
# Debian's spdlog is a compiled library using the external fmt.
DEFINES := -DSPDLOG_SHARED_LIB -DSPDLOG_COMPILED_LIB -DSPDLOG_FMT_EXTERNAL -DASIO_NO_DEPRECATED
CXXFLAGS := -std=c++20 $(MODE_FLAGS) $(WARNINGS) $(DEFINES) -Isrc -MMD -MP
# Evaluated when used (after the deps stamp exists), not when the Makefile is read.
FUSE_CFLAGS = $(shell pkg-config --cflags fuse3)
LDLIBS := -lfuse3 -lyaml-cpp -lspdlog -lfmt -lsodium -lxxhash -lssl -lcrypto -luring -lsystemd -pthread
# prometheus-cpp (src/metrics only): pkg-config --libs prometheus-cpp-pull
LDLIBS += -lprometheus-cpp-pull -lprometheus-cpp-core
# cpp-httplib (src/trace/export.cc only, the OTLP client): Debian builds it as a library
# with these features, and its header must be compiled with the same ones.
HTTPLIB_CFLAGS := -DCPPHTTPLIB_OPENSSL_SUPPORT -DCPPHTTPLIB_ZLIB_SUPPORT -DCPPHTTPLIB_BROTLI_SUPPORT
LDLIBS += -lcpp-httplib
TEST_LDLIBS := -lgmock -lgtest -pthread

# ---- sources and libraries ----------------------------------------------------------
# Layering (STYLE.md): common <- proto <- {downstairs, upstairs} <- fuse/tools, and
# common <- trace <- {downstairs, upstairs} (spans, sampling, the exporters' thread). Each module
# is a static library, and each binary links only the libraries it uses, so a call against
# the layering fails to link. The asio shells, named file by file, are libraries of their
# own; a module's core is every other .cc in its directory (main.cc excepted) and links no
# asio (make check-layers).
module_srcs = $(filter-out $(1)/main.cc $(2),$(wildcard $(1)/*.cc))
objs = $(patsubst %.cc,$(BUILD)/obj/%.o,$(1))

# The shells (wildcard: a file not yet written is simply absent).
PROTO_NET_SRC := $(wildcard src/proto/framed_socket.cc src/proto/connection.cc src/proto/stream.cc \
  src/proto/tls.cc)
DOWNSTAIRS_SERVER_SRC := $(wildcard src/downstairs/server.cc)
VOLUME_SRC := $(wildcard src/upstairs/volume.cc src/upstairs/sub_volumes.cc \
  src/upstairs/targets_parent.cc)

COMMON_SRC := $(call module_srcs,src/common)
PROTO_SRC := $(call module_srcs,src/proto,$(PROTO_NET_SRC))
DOWNSTAIRS_SRC := $(call module_srcs,src/downstairs,$(DOWNSTAIRS_SERVER_SRC))
UPSTAIRS_SRC := $(call module_srcs,src/upstairs,$(VOLUME_SRC))
FUSE_SRC := $(call module_srcs,src/fuse)
# The Prometheus endpoints of crucible-fuse and crucible-downstairs: a shell above both.
METRICS_SRC := $(wildcard src/metrics/*.cc)
# Tracing: the Tracer (sampling, ids, the bounded queue and its sender thread) and the
# Jaeger and OTLP exporters (no asio; the cores call only the Tracer).
TRACE_SRC := $(wildcard src/trace/*.cc)

LIB_COMMON := $(BUILD)/lib/libcru_common.a
LIB_PROTO := $(BUILD)/lib/libcru_proto.a
LIB_PROTO_NET := $(BUILD)/lib/libcru_proto_net.a
LIB_DOWNSTAIRS := $(BUILD)/lib/libcru_downstairs.a
LIB_DOWNSTAIRS_SERVER := $(BUILD)/lib/libcru_downstairs_server.a
LIB_UPSTAIRS := $(BUILD)/lib/libcru_upstairs.a
LIB_VOLUME := $(BUILD)/lib/libcru_volume.a
LIB_FUSE := $(BUILD)/lib/libcru_fuse.a
LIB_METRICS := $(BUILD)/lib/libcru_metrics.a
LIB_TRACE := $(BUILD)/lib/libcru_trace.a
CORE_LIBS := $(LIB_COMMON) $(LIB_PROTO) $(LIB_TRACE) $(LIB_DOWNSTAIRS) $(LIB_UPSTAIRS)

# What a program links, dependents first (the order a static link needs).
LINK_PROTO := $(LIB_PROTO) $(LIB_COMMON)
LINK_PROTO_NET := $(LIB_PROTO_NET) $(LINK_PROTO)
LINK_DOWNSTAIRS := $(LIB_DOWNSTAIRS) $(LIB_TRACE) $(LINK_PROTO)
LINK_SERVER := $(LIB_DOWNSTAIRS_SERVER) $(LIB_DOWNSTAIRS) $(LIB_TRACE) $(LINK_PROTO_NET)
LINK_UPSTAIRS := $(LIB_UPSTAIRS) $(LIB_TRACE) $(LINK_PROTO)
LINK_VOLUME := $(LIB_VOLUME) $(LIB_UPSTAIRS) $(LIB_TRACE) $(LINK_PROTO_NET)
LINK_FUSE := $(LIB_FUSE) $(LINK_VOLUME)

BINARIES :=
ifneq ($(wildcard src/downstairs/main.cc),)
  BINARIES += $(BUILD)/bin/crucible-downstairs
endif
ifneq ($(wildcard src/fuse/main.cc),)
  BINARIES += $(BUILD)/bin/crucible-fuse
endif
ifneq ($(wildcard src/tools/crucible/*.cc),)
  BINARIES += $(BUILD)/bin/crucible
endif
ifneq ($(wildcard src/tools/dsc/*.cc),)
  BINARIES += $(BUILD)/bin/crucible-dsc
endif

# ---- tests -------------------------------------------------------------------------
# One GoogleTest binary per directory: tests/unit/<module>/, tests/sim/, tests/e2e/.
UNIT_DIRS := $(sort $(dir $(wildcard tests/unit/*/*.cc)))
UNIT_TESTS := $(foreach d,$(UNIT_DIRS),$(BUILD)/tests/unit_$(notdir $(patsubst %/,%,$(d))))
SIM_TEST := $(if $(wildcard tests/sim/*.cc),$(BUILD)/tests/sim)
E2E_TEST := $(if $(wildcard tests/e2e/*.cc),$(BUILD)/tests/e2e)
FAST_TESTS := $(UNIT_TESTS) $(SIM_TEST)
ALL_TESTS := $(FAST_TESTS) $(E2E_TEST)

DEPS_STAMP := $(BUILD)/.deps-ok

.PHONY: all test asan tsan fast-test unit-test deps run bench chaos netns format format-check lint \
  check-headers check-layers clean man install deb

all: $(BINARIES)

deps:
	@scripts/deps.sh

$(DEPS_STAMP): scripts/deps.sh
	@scripts/deps.sh
	@mkdir -p $(@D) && touch $@

# ---- compile and link ---------------------------------------------------------------
$(BUILD)/obj/src/fuse/%.o: src/fuse/%.cc | $(DEPS_STAMP)
	@mkdir -p $(@D)
	$(CXX) $(CXXFLAGS) $(FUSE_CFLAGS) -c $< -o $@

$(BUILD)/obj/tests/%.o: tests/%.cc | $(DEPS_STAMP)
	@mkdir -p $(@D)
	$(CXX) $(CXXFLAGS) $(FUSE_CFLAGS) -Itests -c $< -o $@

$(BUILD)/obj/%.o: %.cc | $(DEPS_STAMP)
	@mkdir -p $(@D)
	$(CXX) $(CXXFLAGS) -c $< -o $@

# Rebuilt when the Makefile changes too: it decides which objects each library holds.
$(BUILD)/lib/libcru_%.a: Makefile
	@mkdir -p $(@D)
	@rm -f $@
	ar rcs $@ $(filter %.o,$^)

$(LIB_COMMON): $(call objs,$(COMMON_SRC))
$(LIB_PROTO): $(call objs,$(PROTO_SRC))
$(LIB_PROTO_NET): $(call objs,$(PROTO_NET_SRC))
$(LIB_DOWNSTAIRS): $(call objs,$(DOWNSTAIRS_SRC))
$(LIB_DOWNSTAIRS_SERVER): $(call objs,$(DOWNSTAIRS_SERVER_SRC))
$(LIB_UPSTAIRS): $(call objs,$(UPSTAIRS_SRC))
$(LIB_VOLUME): $(call objs,$(VOLUME_SRC))
$(LIB_FUSE): $(call objs,$(FUSE_SRC))
$(LIB_METRICS): $(call objs,$(METRICS_SRC))
$(LIB_TRACE): $(call objs,$(TRACE_SRC))
$(BUILD)/obj/src/trace/export.o $(BUILD)/lint/src/trace/export.ok: CXXFLAGS += $(HTTPLIB_CFLAGS)

# Objects, then the libraries among the prerequisites in the order listed, then $(1).
define link
	@mkdir -p $(@D)
	$(CXX) $(CXXFLAGS) $(filter %.o,$^) $(filter %.a,$^) $(1) $(LDLIBS) -o $@
endef

$(BUILD)/bin/crucible-downstairs: $(call objs,src/downstairs/main.cc) $(LIB_METRICS) $(LINK_SERVER)
	$(call link)
$(BUILD)/bin/crucible-fuse: $(call objs,src/fuse/main.cc) $(LIB_METRICS) $(LINK_FUSE)
	$(call link)
$(BUILD)/bin/crucible: $(call objs,$(wildcard src/tools/crucible/*.cc)) $(LINK_VOLUME)
	$(call link)
# The supervisor runs (and creates regions with) the crucible-downstairs binary: common only.
$(BUILD)/bin/crucible-dsc: $(call objs,$(wildcard src/tools/dsc/*.cc)) $(LIB_COMMON)
	$(call link)

# The cores link no asio: no core library may define or use an asio symbol.
check-layers: $(CORE_LIBS)
	@status=0; for lib in $^; do \
	  if nm -C $$lib | grep -q 'asio::'; then \
	    echo "check-layers: $$lib (a core library) uses asio:"; \
	    nm -C -A $$lib | grep 'asio::' | head -5; status=1; \
	  fi; \
	done; exit $$status

.SECONDEXPANSION:

# Test binaries: every .cc in the directory, the shared helpers in tests/support/ (a
# library, so a test pulls in only the helpers it uses) and the libraries under test.
LIB_TEST_SUPPORT := $(BUILD)/lib/libcru_test_support.a
$(LIB_TEST_SUPPORT): $(call objs,$(wildcard tests/support/*.cc))
# Per tests/unit/<module>/: the cores alone where the tests allow.
UNIT_LINK_common := $(LIB_COMMON)
UNIT_LINK_proto := $(LINK_PROTO_NET)  # loopback_test drives the asio framing
UNIT_LINK_downstairs := $(LINK_SERVER)  # server_test drives the TCP server
UNIT_LINK_upstairs := $(LINK_UPSTAIRS)
UNIT_LINK_fuse := $(LIB_FUSE) $(LINK_UPSTAIRS)  # config and status need no Volume
UNIT_LINK_metrics := $(LIB_METRICS) $(LINK_UPSTAIRS)  # the collectors read plain stats
UNIT_LINK_trace := $(LINK_UPSTAIRS)  # the upstairs' guest tracing with the Tracer
# Named here so make treats test objects as ordinary files, not intermediates to delete
# (or, when missing, to skip): a rebuild then compiles exactly what changed.
TEST_OBJS := $(call objs,$(wildcard tests/unit/*/*.cc tests/sim/*.cc tests/e2e/*.cc tests/support/*.cc \
  tests/tools/*.cc))
# Test code needs line tables for failure reports and backtraces, not full debug info, nor
# -O2 (the code under test is in the libraries): -Og -g1 compiles gtest-heavy files in about
# half the time. Not the simulator's, which runs thousands of seeds through its harness.
$(TEST_OBJS): CXXFLAGS += -g1
$(filter-out $(call objs,$(wildcard tests/sim/*.cc)),$(TEST_OBJS)): CXXFLAGS += -Og
.PHONY: test-objects
test-objects: $(TEST_OBJS)
$(BUILD)/tests/unit_%: $$(call objs,$$(wildcard tests/unit/%/*.cc)) $(LIB_TEST_SUPPORT) \
    $$(or $$(UNIT_LINK_$$*),$$(error tests/unit/$$* needs its libraries in UNIT_LINK_$$*))
	$(call link,$(TEST_LDLIBS) -lgtest_main)
# The simulator drives the real cores: no asio, no sockets.
$(BUILD)/tests/sim: $(call objs,$(wildcard tests/sim/*.cc)) $(LIB_TEST_SUPPORT) $(LIB_UPSTAIRS) \
    $(LINK_DOWNSTAIRS)
	$(call link,$(TEST_LDLIBS) -lgtest_main)
# The delaying TCP proxy (tests/support/delay_proxy.h) as a program: the netns test runs
# it inside the namespaces, make bench puts it in front of the downstairs (1 ms RTT).
DELAY_PROXY := $(BUILD)/tests/delay_proxy
$(DELAY_PROXY): $(call objs,tests/tools/delay_proxy.cc) $(LIB_TEST_SUPPORT) $(LIB_COMMON)
	$(call link)
# End to end: the binaries, driven through tests/support (which speaks the protocol).
$(BUILD)/tests/e2e: $(call objs,$(wildcard tests/e2e/*.cc)) $(LIB_TEST_SUPPORT) $(LINK_PROTO) \
    $(BINARIES) $(DELAY_PROXY)
	$(call link,$(TEST_LDLIBS) -lgtest_main)

# ---- test entry points --------------------------------------------------------------
# End-to-end tests find the binaries through CRUCIBLE_BIN, and the Debian package (built
# first, once everything else is: it runs make itself) through CRUCIBLE_DEB.
test: $(ALL_TESTS) $(BINARIES) $(DELAY_PROXY)
	@$(MAKE) --no-print-directory deb >$(BUILD)/deb.log 2>&1 || \
	  { tail -40 $(BUILD)/deb.log; echo "make test: make deb failed (log: $(BUILD)/deb.log)"; exit 1; }
	@CRUCIBLE_BIN=$(abspath $(BUILD)/bin) CRUCIBLE_DEB=$$(ls $(abspath build/deb)/*.deb) \
	  tests/run.sh 1800 $(ALL_TESTS)

fast-test: $(FAST_TESTS)
	@tests/run.sh 900 $(FAST_TESTS)

# The crash tests and the simulator run fewer seeds under a sanitizer (see each).
asan:
	@$(MAKE) --no-print-directory MODE=asan fast-test

# TSan finds races between threads: the unit tests of the servers, the io thread and the
# exporters. Not the simulator, nor the pure cores' tests (Core*), the crash tests and the
# codec's, which run on one thread (and take minutes under TSan's shadow memory for nothing).
tsan:
	@GTEST_ARGS='--gtest_filter=-*CrashTest.*:Core*.*:Codec.*:FrameReader.*' $(MAKE) --no-print-directory MODE=tsan unit-test

unit-test: $(UNIT_TESTS)
	@tests/run.sh 900 $(UNIT_TESTS)

run: all
	@scripts/run.sh

# Side by side with the FUSE ceiling and nbdkit+nbdfuse (bench/bench.py --help):
# BENCH_SECONDS per shape (default 6), BENCH_TREE_MB for the tree copy (default 600).
bench: all $(DELAY_PROXY)
	@bench/bench.py

# The end-to-end fault loop (scripts/chaos.sh --help): CHAOS_SECONDS (default 600) of
# faults, CHAOS_MODE kill (default), stop or replay (short outages that must be replayed).
chaos: all
	@CRUCIBLE_BIN=$(abspath $(BUILD)/bin) scripts/chaos.sh --seconds $(or $(CHAOS_SECONDS),600) \
	  --mode $(or $(CHAOS_MODE),kill)

# The downstairs on other hosts (tests/e2e/netns_test.cc, docs/network-tests.md): three
# network namespaces behind veth pairs and a bridge, fio verify under packet loss,
# partitions, a bandwidth cap and 1 ms RTT. Also part of `make test`.
netns: $(E2E_TEST) $(BINARIES) $(DELAY_PROXY)
	@CRUCIBLE_BIN=$(abspath $(BUILD)/bin) GTEST_ARGS='--gtest_filter=Netns.*' \
	  tests/run.sh 1800 $(E2E_TEST)

# ---- fuzzing (clang + libFuzzer) ----------------------------------------------------
FUZZ_SECONDS ?= 60
FUZZ_DIR := build-fuzz
# The decoder's fuzzer drives the pure proto core: the asio framing is not under test.
# Every source is compiled once, in parallel, into objects of its own (instrumented for
# coverage with -fsanitize=fuzzer-no-link) shared by the three fuzzers; only the link adds
# libFuzzer's main. The stateful fuzzers drive a whole core (with the in-memory FaultFs for
# the downstairs); the cores call the Tracer (tracing off in the fuzzers), not the exporters.
FUZZ_CXXFLAGS := -std=c++20 -O1 -g1 -fsanitize=address,undefined -fno-sanitize-recover=all \
  $(DEFINES) -Isrc -Itests -MMD -MP
fuzz_objs = $(patsubst %.cc,$(FUZZ_DIR)/obj/%.o,$(1))
FUZZ_CORE_OBJS := $(call fuzz_objs,$(COMMON_SRC) $(PROTO_SRC) $(wildcard src/trace/tracer.cc))
# libcrypto: src/common holds the local PKI (certificate generation for crucible-dsc).
FUZZ_LIBS := -lspdlog -lfmt -lsodium -lxxhash -lssl -lcrypto -luring -lsystemd -pthread
$(FUZZ_DIR)/obj/%.o: %.cc | $(DEPS_STAMP)
	@mkdir -p $(@D)
	clang++ $(FUZZ_CXXFLAGS) -fsanitize=fuzzer-no-link -c $< -o $@
$(FUZZ_DIR)/fuzz_decode: $(call fuzz_objs,tests/fuzz/fuzz_decode.cc) $(FUZZ_CORE_OBJS)
$(FUZZ_DIR)/fuzz_downstairs: $(call fuzz_objs,tests/fuzz/fuzz_downstairs.cc $(DOWNSTAIRS_SRC) \
  tests/support/fault_fs.cc) $(FUZZ_CORE_OBJS)
$(FUZZ_DIR)/fuzz_upstairs: $(call fuzz_objs,tests/fuzz/fuzz_upstairs.cc $(UPSTAIRS_SRC)) \
  $(FUZZ_CORE_OBJS)
$(addprefix $(FUZZ_DIR)/,fuzz_decode fuzz_downstairs fuzz_upstairs):
	clang++ $(FUZZ_CXXFLAGS) -fsanitize=fuzzer $^ $(FUZZ_LIBS) -o $@
$(FUZZ_DIR)/make_corpus: tests/fuzz/make_corpus.cc $(LIB_PROTO) $(LIB_COMMON)
	@mkdir -p $(@D)
	$(CXX) $(CXXFLAGS) $< $(LIB_PROTO) $(LIB_COMMON) $(LDLIBS) -o $@

# Every fuzzer runs FUZZ_SECONDS, each with its own corpus directory (make -j runs them side
# by side); the decoder's starts from seeds of every message, a stateful one from
# tests/fuzz/regressions/NAME (inputs that once crashed it, run first). A crash stops the
# target with the reproducer in artifacts/.
FUZZERS := fuzz_decode fuzz_downstairs fuzz_upstairs
FUZZ_SEEDS_fuzz_decode := $(FUZZ_DIR)/seeds
FUZZ_SEEDS_fuzz_downstairs := $(wildcard tests/fuzz/regressions/fuzz_downstairs)
FUZZ_SEEDS_fuzz_upstairs := $(wildcard tests/fuzz/regressions/fuzz_upstairs)
.PHONY: fuzz fuzz-seeds $(addprefix fuzz-run-,$(FUZZERS))
fuzz: $(addprefix fuzz-run-,$(FUZZERS))
fuzz-seeds: $(FUZZ_DIR)/make_corpus
	@rm -rf $(FUZZ_DIR)/seeds && mkdir -p $(FUZZ_DIR)/seeds $(FUZZ_DIR)/artifacts \
	  $(addprefix $(FUZZ_DIR)/corpus/,$(FUZZERS))
	@$(FUZZ_DIR)/make_corpus $(FUZZ_DIR)/seeds
$(addprefix fuzz-run-,$(FUZZERS)): fuzz-run-%: $(FUZZ_DIR)/% fuzz-seeds
	$< -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 -artifact_prefix=$(FUZZ_DIR)/artifacts/$*- \
	  $(FUZZ_DIR)/corpus/$* $(FUZZ_SEEDS_$*)

# ---- style --------------------------------------------------------------------------
CXX_FILES = $(shell git ls-files '*.cc' '*.h')
format: | $(DEPS_STAMP)
	clang-format -i $(CXX_FILES)

# The tree is formatted (.clang-format: Google base, 100 columns); CI fails otherwise.
format-check: | $(DEPS_STAMP)
	clang-format --dry-run --Werror $(CXX_FILES)

# clang-tidy (.clang-tidy) on every source file in src/, one stamp per file so `make -j` runs
# them in parallel and a rerun checks only what changed (the file, a header it includes, the
# config). Silent when clean; any finding prints and fails.
LINT_SRC = $(filter src/%,$(filter %.cc,$(CXX_FILES)))
# g++ is the compiler of record, so clang's own warnings are not findings (no -Werror). clang
# 14 implements C++20 coroutines but does not say so (__cpp_impl_coroutine), so libstdc++
# 12's <coroutine> and asio would hide them: say so for it.
LINT_FLAGS = $(filter-out -MMD -MP -Werror,$(CXXFLAGS)) $(FUSE_CFLAGS) \
  -D__cpp_impl_coroutine=201902L -DASIO_HAS_CO_AWAIT=1
lint: $(patsubst %.cc,$(BUILD)/lint/%.ok,$(LINT_SRC))
$(BUILD)/lint/%.ok: %.cc .clang-tidy | $(DEPS_STAMP)
	@mkdir -p $(@D)
	@$(CXX) $(filter-out -MMD -MP,$(CXXFLAGS)) $(FUSE_CFLAGS) -MM -MP -MT $@ -MF $(@:.ok=.d) $<
	@clang-tidy --quiet --warnings-as-errors='*' $< -- $(LINT_FLAGS) >$(@:.ok=.log) 2>&1 || \
	  { grep -v ' warnings\? generated\.$$' $(@:.ok=.log); exit 1; }
	@touch $@

# Every header compiles on its own.
HEADERS := $(wildcard src/*/*.h src/tools/*/*.h)
HEADER_CHECKS := $(patsubst %.h,$(BUILD)/hdr/%.ok,$(HEADERS))
check-headers: $(HEADER_CHECKS)
$(BUILD)/hdr/%.ok: %.h | $(DEPS_STAMP)
	@mkdir -p $(@D)
	@# Included from a one-line file, as users do (compiling it directly warns "#pragma once in main file").
	echo '#include "$<"' | $(CXX) $(filter-out -MMD -MP,$(CXXFLAGS)) $(FUSE_CFLAGS) -I. -fsyntax-only -x c++ - && touch $@

# ---- install and package -------------------------------------------------------------
# make install [PREFIX=/usr/local] [DESTDIR=]: the programs, man pages generated from their
# --help (scripts/man.sh), the systemd units with this PREFIX's paths, the sysusers entry
# and the example configuration in /etc/crucible (docs/deploy.md). make deb: the same as a
# Debian package (debian/), in build/deb, checked with lintian.
PREFIX ?= /usr/local
BINDIR := $(PREFIX)/bin
MAN1DIR := $(PREFIX)/share/man/man1
UNITDIR := $(PREFIX)/lib/systemd/system
SYSUSERSDIR := $(PREFIX)/lib/sysusers.d
DOCDIR := $(PREFIX)/share/doc/crucible
CONFDIR := /etc/crucible
MAN_STAMP := $(BUILD)/man/.stamp
UNITS := $(notdir $(basename $(wildcard packaging/systemd/*.service.in)))

$(MAN_STAMP): $(BINARIES) scripts/man.sh src/common/service.h
	@scripts/man.sh $(BUILD)/bin $(@D)
	@touch $@

man: $(MAN_STAMP)

install: all man
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(MAN1DIR) $(DESTDIR)$(UNITDIR) \
	  $(DESTDIR)$(DOCDIR) $(DESTDIR)$(CONFDIR)/downstairs
	install -m 0755 $(BINARIES) $(DESTDIR)$(BINDIR)/
	install -m 0644 $(BUILD)/man/*.1 $(DESTDIR)$(MAN1DIR)/
	for u in $(UNITS); do \
	  sed 's|@BINDIR@|$(BINDIR)|g' packaging/systemd/$$u.in >$(DESTDIR)$(UNITDIR)/$$u || exit 1; \
	  chmod 0644 $(DESTDIR)$(UNITDIR)/$$u; \
	done
	install -D -m 0644 packaging/crucible.sysusers $(DESTDIR)$(SYSUSERSDIR)/crucible.conf
	install -m 0644 etc/crucible.yaml $(DESTDIR)$(CONFDIR)/example.yaml
	install -m 0644 packaging/etc/downstairs.conf $(DESTDIR)$(CONFDIR)/downstairs/example.conf
	install -m 0644 README.md LICENSE $(DESTDIR)$(DOCDIR)/
	install -d $(DESTDIR)$(DOCDIR)/docs && install -m 0644 docs/*.md $(DESTDIR)$(DOCDIR)/docs/

# The package reuses this tree's build (debian/rules runs make); debhelper and lintian are
# installed by scripts/deps.sh deb.
deb: | $(DEPS_STAMP)
	@scripts/deps.sh deb
	@rm -rf build/deb debian/crucible debian/.debhelper debian/files debian/*.substvars \
	  debian/debhelper-build-stamp
	@mkdir -p build/deb
	debian/rules build
	fakeroot debian/rules binary
	lintian --fail-on error build/deb/*.deb
	@ls build/deb/*.deb

clean:
	rm -rf build build-asan build-tsan build-fuzz

-include $(shell find $(BUILD)/obj $(BUILD)/lint $(FUZZ_DIR)/obj -name '*.d' 2>/dev/null)
