# Tandem - one Makefile for everything (DESIGN.md section 6.9).
#
#   make                 build build/bin/tandem and the test runner
#   make test            install missing deps, build, run every test
#   make run             start the local cluster on the demo model
#   make SANITIZER=address,undefined test   the same under ASan+UBSan
#   make CUDA=0|1|auto   CUDA parts: never, must, when nvcc is found (default)
#   make format / format-check / fuzz / clean
#
# Sources are found by wildcard: every common/<lib>/*.c, kvxfer/*.c,
# router/*.c, prefill-worker/*.c, decode-worker/*.c and bench/*.c goes into
# libtandem.a; tests/unit/*.c into the test runner. Files ending in
# _nocuda.c are the CPU-only stand-ins of *.cu files and are compiled only
# when CUDA is off.

SHELL := /bin/bash
.DEFAULT_GOAL := all
comma := ,

SANITIZER ?=
CUDA ?= auto
ifeq ($(SANITIZER),)
BUILD ?= build
else
BUILD ?= build/san-$(subst $(comma),-,$(SANITIZER))
endif
V ?= 0
ifeq ($(V),0)
Q := @
else
Q :=
endif
NPROC := $(shell nproc 2>/dev/null || echo 2)
TEST_JOBS ?= $(NPROC)
TEST_ARGS ?=

CC := gcc
VERSION := $(shell cat VERSION 2>/dev/null || echo 0.0.0)

# --- CUDA detection ---------------------------------------------------------
NVCC_PATH := $(shell command -v nvcc 2>/dev/null || { test -x /usr/local/cuda/bin/nvcc && echo /usr/local/cuda/bin/nvcc; })
ifeq ($(CUDA),1)
  ifeq ($(NVCC_PATH),)
    $(error CUDA=1 but nvcc was not found on PATH or in /usr/local/cuda/bin)
  endif
  WITH_CUDA := 1
else ifeq ($(CUDA),auto)
  WITH_CUDA := $(if $(NVCC_PATH),1,0)
else ifeq ($(CUDA),0)
  WITH_CUDA := 0
else
  $(error CUDA must be 0, 1 or auto (got '$(CUDA)'))
endif
CUDA_HOME := $(patsubst %/bin/nvcc,%,$(NVCC_PATH))
CUDA_ARCH ?= -gencode arch=compute_90,code=sm_90 -gencode arch=compute_90,code=compute_90

# --- Sources ----------------------------------------------------------------
LIB_DIRS := $(sort $(dir $(wildcard common/*/*.c common/*/*.cu))) kvxfer/ router/ \
            prefill-worker/ decode-worker/ bench/
MAIN_SRC := common/cli/tandem_main.c
LIB_C_ALL := $(filter-out $(MAIN_SRC),$(foreach d,$(LIB_DIRS),$(wildcard $(d)*.c)))
LIB_CU := $(foreach d,$(LIB_DIRS),$(wildcard $(d)*.cu))
ifeq ($(WITH_CUDA),1)
  LIB_C := $(filter-out %_nocuda.c,$(LIB_C_ALL))
else
  LIB_C := $(LIB_C_ALL)
  LIB_CU :=
endif
PROTOS := $(wildcard proto/*.proto)
PROTO_C := $(patsubst proto/%.proto,$(BUILD)/gen/%.pb-c.c,$(PROTOS))
PROTO_H := $(PROTO_C:.c=.h)
LLHTTP_DIR := /usr/share/llhttp
LLHTTP_C := $(wildcard $(LLHTTP_DIR)/*.c)
TEST_SRC := $(wildcard tests/unit/*.c) tests/lib/tt_runner.c

OBJ := $(BUILD)/obj
LIB_OBJS := $(patsubst %.c,$(OBJ)/%.o,$(LIB_C)) $(patsubst %.cu,$(OBJ)/%.cu.o,$(LIB_CU)) \
            $(patsubst $(BUILD)/gen/%.c,$(OBJ)/gen/%.o,$(PROTO_C)) \
            $(patsubst $(LLHTTP_DIR)/%.c,$(OBJ)/llhttp/%.o,$(LLHTTP_C))
MAIN_OBJ := $(OBJ)/$(MAIN_SRC:.c=.o)
TEST_OBJS := $(patsubst %.c,$(OBJ)/%.o,$(TEST_SRC))
LIB := $(BUILD)/lib/libtandem.a
BIN := $(BUILD)/bin/tandem
TEST_BIN := $(BUILD)/bin/tandem-tests

# --- Flags ------------------------------------------------------------------
INCLUDES := $(addprefix -I,$(LIB_DIRS)) -Itests/lib -I$(BUILD)/gen -I/usr/share/include/llhttp
DEFS := -D_GNU_SOURCE -DTANDEM_VERSION='"$(VERSION)"' -DTANDEM_WITH_CUDA=$(WITH_CUDA)
WARN := -Wall -Wextra -Werror -Wno-unused-parameter -Wshadow -Wvla -Wformat=2 -Wno-format-truncation -Wno-psabi
OPT ?= -O2
CFLAGS := -std=gnu11 $(OPT) -g -pthread -fno-strict-aliasing $(WARN) $(DEFS) $(INCLUDES) -MMD -MP
LDFLAGS := -pthread
LDLIBS := -luv -lzmq -lucp -luct -lucs -lprotobuf-c -lcjson -lpcre2-8 -lnghttp2 -lm -ldl -lrt
ifneq ($(SANITIZER),)
  SANFLAGS := -fsanitize=$(SANITIZER) -fno-omit-frame-pointer
  ifneq ($(findstring undefined,$(SANITIZER)),)
    SANFLAGS += -fno-sanitize-recover=undefined
  endif
  CFLAGS += $(SANFLAGS)
  LDFLAGS += $(SANFLAGS)
endif
ifeq ($(WITH_CUDA),1)
  NVCCFLAGS := -std=c++17 -O2 -g $(CUDA_ARCH) $(DEFS) $(INCLUDES) -MMD -MP \
               -Xcompiler -Wall,-Wextra,-Werror,-Wno-unused-parameter,-Wno-format-truncation,-fno-strict-aliasing
  LDFLAGS += -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64
  LDLIBS += -lcublas -lcudart -lstdc++
endif

# --- Rules ------------------------------------------------------------------
.PHONY: pydeps
.PHONY: all test run deps format format-check fuzz clean tools print-config venv

all: $(BIN) $(TEST_BIN)

print-config:
	@echo "BUILD=$(BUILD) SANITIZER=$(SANITIZER) CUDA=$(CUDA) WITH_CUDA=$(WITH_CUDA) NVCC=$(NVCC_PATH)"

$(BUILD)/gen/%.pb-c.c $(BUILD)/gen/%.pb-c.h: proto/%.proto
	@mkdir -p $(@D)
	@echo "  PROTOC  $<"
	$(Q)protoc-c --proto_path=proto --c_out=$(BUILD)/gen $<

$(OBJ)/gen/%.o: $(BUILD)/gen/%.c
	@mkdir -p $(@D)
	@echo "  CC      $<"
	$(Q)$(CC) $(filter-out -Wshadow,$(CFLAGS)) -c $< -o $@

$(OBJ)/llhttp/%.o: $(LLHTTP_DIR)/%.c
	@mkdir -p $(@D)
	@echo "  CC      $<"
	$(Q)$(CC) $(filter-out -W%,$(CFLAGS)) -w -c $< -o $@

$(OBJ)/%.o: %.c | $(PROTO_H)
	@mkdir -p $(@D)
	@echo "  CC      $<"
	$(Q)$(CC) $(CFLAGS) -c $< -o $@

$(OBJ)/%.cu.o: %.cu | $(PROTO_H)
	@mkdir -p $(@D)
	@echo "  NVCC    $<"
	$(Q)$(NVCC_PATH) $(NVCCFLAGS) -c $< -o $@

# The commit is baked into one object, rebuilt only when it changes.
COMMIT := $(shell git describe --always --dirty 2>/dev/null || echo unknown)
$(BUILD)/gen/commit.txt: FORCE
	@mkdir -p $(@D)
	@echo '$(COMMIT)' | cmp -s - $@ || echo '$(COMMIT)' > $@
# Objects are rebuilt when the compile configuration (flags, CUDA) changes.
CONFIG_LINE := $(CC) $(CFLAGS) | $(WITH_CUDA) | $(NVCCFLAGS)
$(BUILD)/gen/config.txt: FORCE
	@mkdir -p $(@D)
	@echo '$(CONFIG_LINE)' | cmp -s - $@ || echo '$(CONFIG_LINE)' > $@
$(LIB_OBJS) $(MAIN_OBJ) $(TEST_OBJS): $(BUILD)/gen/config.txt
$(OBJ)/common/base/cm_version.o: $(BUILD)/gen/commit.txt
$(OBJ)/common/base/cm_version.o: CFLAGS += -DTANDEM_COMMIT='"$(COMMIT)"'
FORCE:
.SECONDARY: $(PROTO_C) $(PROTO_H)

$(LIB): $(LIB_OBJS)
	@mkdir -p $(@D)
	@rm -f $@
	@echo "  AR      $@"
	$(Q)ar rcs $@ $^

$(BIN): $(MAIN_OBJ) $(LIB)
	@mkdir -p $(@D)
	@echo "  LINK    $@"
	$(Q)$(CC) $(LDFLAGS) -o $@ $(MAIN_OBJ) $(LIB) $(LDLIBS)

$(TEST_BIN): $(TEST_OBJS) $(LIB)
	@mkdir -p $(@D)
	@echo "  LINK    $@"
	$(Q)$(CC) $(LDFLAGS) -o $@ $(TEST_OBJS) $(LIB) $(LDLIBS)

deps:
	@scripts/install-deps.sh

# Python test clients (the openai SDK) in build/venv-test; quiet when present.
TEST_VENV := build/venv-test
pydeps: deps
	@TANDEM_VENV=$(CURDIR)/$(TEST_VENV) scripts/venv.sh scripts/requirements-test.txt >/dev/null

# Sanitizer run-time settings for the test run (suppressions cover only
# third-party libraries that are not instrumented; see tests/sanitizers/).
# Under TSan: report_mutex_bugs=0 because GCC 12's libtsan misreads glibc
# 2.36's loader lock at exit (_dl_call_fini) in every process; and UCX's
# memory hooks (libucm's madvise/mmap interception) crash under TSan's own
# interceptors, so they are off for that run only.
SAN_ENV := UBSAN_OPTIONS="print_stacktrace=1"
ifneq ($(findstring thread,$(SANITIZER)),)
  SAN_ENV += TSAN_OPTIONS="suppressions=$(CURDIR)/tests/sanitizers/tsan.supp report_mutex_bugs=0" \
             UCX_MEM_EVENTS=no
endif

# The test command the README gives and CI runs.
test: deps pydeps
	@$(MAKE) --no-print-directory all
	@$(SAN_ENV) TANDEM_TEST_PYTHON=$(CURDIR)/$(TEST_VENV)/bin/python $(TEST_BIN) -j $(TEST_JOBS) --scripts tests/integration $(TEST_ARGS)

run: deps
	@$(MAKE) --no-print-directory all
	@scripts/run-local.sh $(BIN)

venv:
	@scripts/venv.sh

FORMAT_SRC = $(shell git ls-files '*.c' '*.h' '*.cu' '*.cuh' 2>/dev/null)
format:
	clang-format -i $(FORMAT_SRC)
format-check:
	clang-format --dry-run --Werror $(FORMAT_SRC)

# libFuzzer targets (clang, for the build machine: -march=native). Not part of
# `make test`; see tests/fuzz/README.md.
FUZZ_SRC := $(wildcard tests/fuzz/fuzz_*.c)
# The code under test and what it uses (no libuv, UCX or ZeroMQ).
FUZZ_LIB_C := $(filter-out %_cmd.c %_zmq.c %_agent.c,$(filter common/base/% common/cp/% common/tok/% common/model/% common/engine/eng_sampler.c router/rt_openai.c,$(LIB_C)))
fuzz: $(PROTO_C)
	@mkdir -p $(BUILD)/fuzz
	@for f in $(FUZZ_SRC); do n=$$(basename $$f .c); \
	  echo "clang $$n"; \
	  clang -std=gnu11 -O1 -g -march=native -fsanitize=fuzzer,address,undefined $(DEFS) $(INCLUDES) $$f \
	    $(FUZZ_LIB_C) $(PROTO_C) -lprotobuf-c -lcjson -lpcre2-8 -lm \
	    -o $(BUILD)/fuzz/$$n || exit 1; done

clean:
	rm -rf build

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)
