# Crucible in C++: build, test and run entry points. See README.md.
#   make            release build with debug info; binaries in build/bin/
#   make test       build and run every test (unit, simulation, end to end)
#   make run        three local downstairs + disk.img mounted at ./mnt
#   make deps       install the Debian packages (as root; quiet when present)
#   make asan|tsan  unit and simulation tests under sanitizers
#   make fuzz       libFuzzer on the protocol decoder (FUZZ_SECONDS, default 60)
#   make format|format-check|lint|check-headers|bench|clean
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
  MODE_FLAGS := -O1 -g -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
  # GCC 12 reports false maybe-uninitialized warnings inside libstdc++ (std::regex,
  # std::function) when sanitizers instrument it; with -Werror in CI they would fail the build.
  MODE_FLAGS += -Wno-maybe-uninitialized
else ifeq ($(MODE),tsan)
  BUILD := build-tsan
  MODE_FLAGS := -O1 -g -fsanitize=thread -Wno-maybe-uninitialized
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
LDLIBS := -lfuse3 -lyaml-cpp -lspdlog -lfmt -lsodium -lxxhash -lssl -lcrypto -pthread
TEST_LDLIBS := -lgmock -lgtest -pthread

# ---- sources -----------------------------------------------------------------------
# Each module is a static library of every .cc in its directory (main.cc excepted);
# binaries link the libraries they need, in dependency order.
module_srcs = $(filter-out $(1)/main.cc,$(wildcard $(1)/*.cc))
objs = $(patsubst %.cc,$(BUILD)/obj/%.o,$(1))

COMMON_SRC := $(call module_srcs,src/common)
PROTO_SRC := $(call module_srcs,src/proto)
DOWNSTAIRS_SRC := $(call module_srcs,src/downstairs)
UPSTAIRS_SRC := $(call module_srcs,src/upstairs)
FUSE_SRC := $(call module_srcs,src/fuse)

LIB_COMMON := $(BUILD)/lib/libcru_common.a
LIB_PROTO := $(BUILD)/lib/libcru_proto.a
LIB_DOWNSTAIRS := $(BUILD)/lib/libcru_downstairs.a
LIB_UPSTAIRS := $(BUILD)/lib/libcru_upstairs.a
LIB_FUSE := $(BUILD)/lib/libcru_fuse.a
# Link order: dependents first (fuse -> upstairs -> downstairs -> proto -> common).
ALL_LIBS := $(LIB_FUSE) $(LIB_UPSTAIRS) $(LIB_DOWNSTAIRS) $(LIB_PROTO) $(LIB_COMMON)

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

.PHONY: all test asan tsan fast-test deps run bench chaos fuzz format format-check lint check-headers clean

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

$(BUILD)/lib/libcru_%.a:
	@mkdir -p $(@D)
	@rm -f $@
	ar rcs $@ $^

$(LIB_COMMON): $(call objs,$(COMMON_SRC))
$(LIB_PROTO): $(call objs,$(PROTO_SRC))
$(LIB_DOWNSTAIRS): $(call objs,$(DOWNSTAIRS_SRC))
$(LIB_UPSTAIRS): $(call objs,$(UPSTAIRS_SRC))
$(LIB_FUSE): $(call objs,$(FUSE_SRC))

define link
	@mkdir -p $(@D)
	$(CXX) $(CXXFLAGS) $(filter %.o,$^) $(ALL_LIBS) $(1) $(LDLIBS) -o $@
endef

$(BUILD)/bin/crucible-downstairs: $(call objs,src/downstairs/main.cc) $(ALL_LIBS)
	$(call link)
$(BUILD)/bin/crucible-fuse: $(call objs,src/fuse/main.cc) $(ALL_LIBS)
	$(call link)
$(BUILD)/bin/crucible: $(call objs,$(wildcard src/tools/crucible/*.cc)) $(ALL_LIBS)
	$(call link)
$(BUILD)/bin/crucible-dsc: $(call objs,$(wildcard src/tools/dsc/*.cc)) $(ALL_LIBS)
	$(call link)

.SECONDEXPANSION:

# Test binaries: every .cc in the directory plus the shared helpers in tests/support/.
TEST_SUPPORT_OBJ := $(call objs,$(wildcard tests/support/*.cc))
# Named here so make treats test objects as ordinary files, not intermediates to delete
# (or, when missing, to skip): a rebuild then compiles exactly what changed.
TEST_OBJS := $(call objs,$(wildcard tests/unit/*/*.cc tests/sim/*.cc tests/e2e/*.cc tests/support/*.cc))
.PHONY: test-objects
test-objects: $(TEST_OBJS)
$(BUILD)/tests/unit_%: $$(call objs,$$(wildcard tests/unit/%/*.cc)) $(TEST_SUPPORT_OBJ) $(ALL_LIBS)
	$(call link,$(TEST_LDLIBS) -lgtest_main)
$(BUILD)/tests/sim: $(call objs,$(wildcard tests/sim/*.cc)) $(TEST_SUPPORT_OBJ) $(ALL_LIBS)
	$(call link,$(TEST_LDLIBS) -lgtest_main)
$(BUILD)/tests/e2e: $(call objs,$(wildcard tests/e2e/*.cc)) $(TEST_SUPPORT_OBJ) $(ALL_LIBS) $(BINARIES)
	$(call link,$(TEST_LDLIBS) -lgtest_main)

# ---- test entry points --------------------------------------------------------------
# End-to-end tests find the binaries through CRUCIBLE_BIN.
test: $(ALL_TESTS) $(BINARIES)
	@CRUCIBLE_BIN=$(abspath $(BUILD)/bin) tests/run.sh 1800 $(ALL_TESTS)

fast-test: $(FAST_TESTS)
	@tests/run.sh 900 $(FAST_TESTS)

asan:
	@$(MAKE) --no-print-directory MODE=asan fast-test

tsan:
	@$(MAKE) --no-print-directory MODE=tsan fast-test

run: all
	@scripts/run.sh

# Side by side with the FUSE ceiling and nbdkit+nbdfuse (bench/bench.py --help):
# BENCH_SECONDS per shape (default 6), BENCH_TREE_MB for the tree copy (default 1200).
bench: all
	@bench/bench.py

# The end-to-end fault loop (scripts/chaos.sh --help): CHAOS_SECONDS (default 600) of
# faults, CHAOS_MODE kill (default) or stop.
chaos: all
	@CRUCIBLE_BIN=$(abspath $(BUILD)/bin) scripts/chaos.sh --seconds $(or $(CHAOS_SECONDS),600) \
	  --mode $(or $(CHAOS_MODE),kill)

# ---- fuzzing (clang + libFuzzer) ----------------------------------------------------
FUZZ_SECONDS ?= 60
FUZZ_DIR := build-fuzz
# The decoder only: the asio framing is not under test and needs no fuzzing build.
FUZZ_SRC := $(COMMON_SRC) $(filter-out src/proto/framed_socket.cc src/proto/connection.cc,$(PROTO_SRC))
FUZZ_FLAGS := -std=c++20 -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
  $(DEFINES) -Isrc
$(FUZZ_DIR)/fuzz_decode: tests/fuzz/fuzz_decode.cc $(FUZZ_SRC) $(wildcard src/common/*.h src/proto/*.h) | $(DEPS_STAMP)
	@mkdir -p $(@D)
	clang++ $(FUZZ_FLAGS) tests/fuzz/fuzz_decode.cc $(FUZZ_SRC) -lspdlog -lfmt -lsodium -lxxhash -o $@
$(FUZZ_DIR)/make_corpus: tests/fuzz/make_corpus.cc $(LIB_PROTO) $(LIB_COMMON)
	@mkdir -p $(@D)
	$(CXX) $(CXXFLAGS) $< $(LIB_PROTO) $(LIB_COMMON) $(LDLIBS) -o $@

fuzz: $(FUZZ_DIR)/fuzz_decode $(FUZZ_DIR)/make_corpus
	@rm -rf $(FUZZ_DIR)/seeds && mkdir -p $(FUZZ_DIR)/seeds $(FUZZ_DIR)/corpus $(FUZZ_DIR)/artifacts
	@$(FUZZ_DIR)/make_corpus $(FUZZ_DIR)/seeds
	$(FUZZ_DIR)/fuzz_decode -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 \
	  -artifact_prefix=$(FUZZ_DIR)/artifacts/ $(FUZZ_DIR)/corpus $(FUZZ_DIR)/seeds

# ---- style --------------------------------------------------------------------------
CXX_FILES = $(shell git ls-files '*.cc' '*.h')
format: | $(DEPS_STAMP)
	clang-format -i $(CXX_FILES)

# The tree is formatted (.clang-format: Google base, 100 columns); CI fails otherwise.
format-check: | $(DEPS_STAMP)
	clang-format --dry-run --Werror $(CXX_FILES)

lint: | $(DEPS_STAMP)
	clang-tidy --quiet $(filter %.cc,$(filter src/%,$(CXX_FILES))) -- $(CXXFLAGS) $(FUSE_CFLAGS)

# Every header compiles on its own.
HEADERS := $(wildcard src/*/*.h src/tools/*/*.h)
HEADER_CHECKS := $(patsubst %.h,$(BUILD)/hdr/%.ok,$(HEADERS))
check-headers: $(HEADER_CHECKS)
$(BUILD)/hdr/%.ok: %.h | $(DEPS_STAMP)
	@mkdir -p $(@D)
	@# Included from a one-line file, as users do (compiling it directly warns "#pragma once in main file").
	echo '#include "$<"' | $(CXX) $(filter-out -MMD -MP,$(CXXFLAGS)) $(FUSE_CFLAGS) -I. -fsyntax-only -x c++ - && touch $@

clean:
	rm -rf build build-asan build-tsan build-fuzz

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)
