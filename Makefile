# rill — build, test, bench, run.
#
# Every part directory becomes one static library (its main.c excluded); each
# process, tool and unit test links the libraries it needs.  Objects go to
# $(B) (build/ by default) so that sanitizer builds live side by side:
#   make                 release build in build/
#   make test            deps + build + unit tests + end-to-end tests
#   make check           the tests again under ASan+UBSan, the ring under TSan,
#                        a bounded libFuzzer run of every network-facing parser,
#                        the exhaustive vector-expf check and a 3-minute soak
#   make check-vexp      the vector expf against glibc's on all 2^32 inputs
#   make chaos / soak    failures and disconnects under load / steady load over time
#   make bench           every benchmark (bench-ring, bench-engine, bench-fanout)
#   make run             deps + build + default model + the whole pipeline

B        ?= build
SAN      ?=
CC       ?= cc
PYTHON   ?= /usr/bin/python3

WARN     := -Wall -Wextra -Werror -Wshadow -Wno-unused-parameter -Wno-format-truncation
CFLAGS   ?= -O2 -g
CFLAGS   += -std=gnu11 $(WARN) -fno-strict-aliasing -pthread -MMD -MP \
            -D_GNU_SOURCE -I. -Icommon
LDFLAGS  += -pthread -Wl,--as-needed
LDLIBS   := -lzmq -lwebsockets -lopenblas -lmsgpackc -lcjson -linih -lpcre2-8 -luring -lm -lrt

ifeq ($(SAN),asan)
  CFLAGS  += -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined -DRILL_SANITIZE=1
  LDFLAGS += -fsanitize=address,undefined
endif
ifeq ($(SAN),tsan)
  CFLAGS  += -fsanitize=thread -fno-omit-frame-pointer -DRILL_SANITIZE=1
  LDFLAGS += -fsanitize=thread
endif

# --- sources ---------------------------------------------------------------
COMMON_SRC     := $(wildcard common/*.c)
WORKER_SRC     := $(filter-out worker/main.c,$(wildcard worker/*.c))
GATEWAY_SRC    := $(filter-out gateway/main.c,$(wildcard gateway/*.c))
SUPERVISOR_SRC := $(filter-out supervisor/main.c,$(wildcard supervisor/*.c))
TOOLSLIB_SRC   := $(wildcard tools/lib/*.c)
TOOL_SRC       := $(wildcard tools/*.c)
UNIT_SRC       := $(wildcard tests/unit/test_*.c)
TESTLIB_SRC    := $(filter-out $(UNIT_SRC),$(wildcard tests/unit/*.c))

obj = $(patsubst %.c,$(B)/obj/%.o,$(1))

LIB_COMMON     := $(B)/lib/libcommon.a
LIB_WORKER     := $(B)/lib/libworker.a
LIB_GATEWAY    := $(B)/lib/libgateway.a
LIB_SUPERVISOR := $(B)/lib/libsupervisor.a
LIB_TOOLS      := $(B)/lib/libtools.a
LIB_TESTUTIL   := $(B)/lib/libtestutil.a
ALL_LIBS       := $(LIB_TOOLS) $(LIB_SUPERVISOR) $(LIB_GATEWAY) $(LIB_WORKER) $(LIB_COMMON)

BINS       := $(B)/rill-worker $(B)/rill-gateway $(B)/rill-supervisor
TOOL_BINS  := $(patsubst tools/%.c,$(B)/%,$(TOOL_SRC))
UNIT_BINS  := $(patsubst tests/unit/%.c,$(B)/tests/%,$(UNIT_SRC))

.PHONY: all deps test test-unit test-e2e check check-asan check-tsan check-soak check-vexp fuzz chaos soak \
        bench bench-ring bench-engine bench-fanout bench-telemetry bench-compare bench-save run clean models
.DEFAULT_GOAL := all

all: $(BINS) $(TOOL_BINS) $(UNIT_BINS)

$(B)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(LIB_COMMON): $(call obj,$(COMMON_SRC))
$(LIB_WORKER): $(call obj,$(WORKER_SRC))
$(LIB_GATEWAY): $(call obj,$(GATEWAY_SRC))
$(LIB_SUPERVISOR): $(call obj,$(SUPERVISOR_SRC))
$(LIB_TOOLS): $(call obj,$(TOOLSLIB_SRC))
$(LIB_TESTUTIL): $(call obj,$(TESTLIB_SRC))
$(ALL_LIBS) $(LIB_TESTUTIL):
	@mkdir -p $(dir $@)
	@rm -f $@
	$(AR) rcs $@ $^

$(BINS): $(B)/rill-%: $(B)/obj/%/main.o $(ALL_LIBS)
	$(CC) $(LDFLAGS) -o $@ $< $(ALL_LIBS) $(LDLIBS)

# rill-bench's recv() stands in for libc's in lws's reads (socket receive
# timestamps, tools/rill-bench.c): the binary must export it.
$(B)/rill-bench: LDFLAGS += -Wl,--export-dynamic-symbol=recv

$(TOOL_BINS): $(B)/%: $(B)/obj/tools/%.o $(ALL_LIBS)
	$(CC) $(LDFLAGS) -o $@ $< $(ALL_LIBS) $(LDLIBS)

$(UNIT_BINS): $(B)/tests/%: $(B)/obj/tests/unit/%.o $(LIB_TESTUTIL) $(ALL_LIBS)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $< $(LIB_TESTUTIL) $(ALL_LIBS) $(LDLIBS) -lcmocka

-include $(shell find $(B)/obj -name '*.d' 2>/dev/null)

# --- dependencies ------------------------------------------------------------
deps:
	@tools/deps.sh

# --- tests -----------------------------------------------------------------
# The suites run one after the other even under -j: the end-to-end tests
# start real processes and should not share the cores with the unit tests.
test: deps
	@$(MAKE) --no-print-directory all
	@$(MAKE) --no-print-directory -j1 test-unit
	@$(MAKE) --no-print-directory -j1 test-e2e

test-unit: $(UNIT_BINS)
	@tools/run-unit.sh $(B) $(UNIT_BINS)

# RILL_BUILD tells the end-to-end tests which binaries to start.
test-e2e: $(BINS) $(TOOL_BINS)
	RILL_BUILD=$(abspath $(B)) $(PYTHON) -m pytest -q -rs tests/e2e $(PYTEST_ARGS)

check: deps
	@$(MAKE) --no-print-directory check-asan
	@$(MAKE) --no-print-directory check-tsan
	@$(MAKE) --no-print-directory fuzz
	@$(MAKE) --no-print-directory all
	@$(MAKE) --no-print-directory check-vexp
	@$(MAKE) --no-print-directory check-soak

# The vector expf (worker/vexp.c) against glibc's expf, and its SiLU against
# the scalar expression, on all 2^32 float inputs in each vector ISA this CPU
# has: about 20 s per ISA and function on one core.  test_vexp checks a
# sample; this is the proof, run after changing vexp.c or the C library.
check-vexp: $(B)/vexp-check
	$(B)/vexp-check --threads 2

check-asan:
	@$(MAKE) --no-print-directory B=build/asan SAN=asan all
	@$(MAKE) --no-print-directory -j1 B=build/asan SAN=asan test-unit
	@$(MAKE) --no-print-directory -j1 B=build/asan SAN=asan test-e2e

# The threaded parts run under TSan: the ring (two-thread stress), the
# compute pool (test_kern) and the histograms' atomic recording; the rest is
# single-threaded or covered by ASan.
TSAN_TESTS := build/tsan/tests/test_ring build/tsan/tests/test_kern build/tsan/tests/test_hist
check-tsan:
	@$(MAKE) --no-print-directory B=build/tsan SAN=tsan $(TSAN_TESTS)
	RILL_STRESS_RECORDS=2000000 tools/run-unit.sh build/tsan $(TSAN_TESTS)

# Bounded libFuzzer runs (ASan+UBSan) of every parser of untrusted bytes:
#   proto    the internal msgpack messages and token records (common/proto.c)
#   request  what clients send, JSON and msgpack (gateway/creq.c)
#   http     the request path's endpoint, the Origin and API-key checks
#            (gateway/httppath.c, gateway/limits.c)
#   gguf     the GGUF reader (worker/gguf.c)
#   jinja    chat templates, which come from model files (worker/jinja.c)
# One after the other, each for FUZZ_SECONDS (FUZZ_S for short), from its
# kept corpus (tests/fuzz/seeds for proto, tests/fuzz/seeds-<name> for the
# others) and what earlier runs found (build/fuzz/corpus-<name>); each prints
# one line: executions, executions per second, coverage, corpus, peak RSS.
# A finding (a failed check, a sanitizer report, a leak, a hang, more than
# -rss_limit_mb) fails the run and leaves its input in build/fuzz/logs.
#   make fuzz FUZZ_S=600     ten minutes per target
# Only the parser under test (FUZZ_SRC_<name>) is compiled for the fuzzer;
# what it calls besides comes from the part libraries.
FUZZ_S       ?= 20
FUZZ_SECONDS ?= $(FUZZ_S)
FUZZ_B       := build/fuzz
FUZZ_CC      := clang -std=gnu11 -g -O1 -D_GNU_SOURCE -I. -Icommon -fsanitize=fuzzer,address,undefined \
                -fno-sanitize-recover=undefined
FUZZ_HDRS    := $(wildcard common/*.h gateway/*.h worker/*.h)
FUZZ_LINK    := $(LIB_GATEWAY) $(LIB_WORKER) $(LIB_COMMON)
FUZZ_SRC_proto   := tests/fuzz/fuzz_proto.c common/proto.c
FUZZ_SRC_request := tests/fuzz/fuzz_request.c gateway/creq.c gateway/chatmsg.c common/proto.c
FUZZ_SRC_http    := tests/fuzz/fuzz_http.c gateway/httppath.c gateway/limits.c
FUZZ_SRC_gguf    := tests/fuzz/fuzz_gguf.c worker/gguf.c
FUZZ_SRC_jinja   := tests/fuzz/fuzz_jinja.c worker/jinja.c
FUZZ_SRC_oaijson := tests/fuzz/fuzz_oaijson.c gateway/oaijson.c gateway/chatmsg.c
FUZZ_NAMES := proto request http gguf jinja oaijson
FUZZ_BINS  := $(patsubst %,$(FUZZ_B)/fuzz_%,$(FUZZ_NAMES))
# The flags every run shares; -timeout: an input that takes 10 s is a hang.
FUZZ_RUN = tests/fuzz/run.sh $(1) $(FUZZ_B)/fuzz_$(1) $(FUZZ_SECONDS) $(FUZZ_B)/logs -timeout=10

define FUZZ_BIN_RULE
$(FUZZ_B)/fuzz_$(1): $(FUZZ_SRC_$(1)) $(FUZZ_HDRS) $(FUZZ_LINK)
	@mkdir -p $$(@D)
	$(FUZZ_CC) $(FUZZ_SRC_$(1)) $(FUZZ_LINK) -pthread -Wl,--as-needed $(LDLIBS) -o $$@
endef
$(foreach n,$(FUZZ_NAMES),$(eval $(call FUZZ_BIN_RULE,$(n))))

fuzz: $(FUZZ_BINS) $(B)/rill-mkmodel
	@mkdir -p $(patsubst %,$(FUZZ_B)/corpus-%,$(FUZZ_NAMES)) $(FUZZ_B)/models-gguf
	@# Small real models as GGUF seeds (made, never committed), each under -max_len.
	@test -f $(FUZZ_B)/models-gguf/spm_q8_tied.gguf || $(B)/rill-mkmodel --dim 32 --layers 1 --heads 2 \
	    --ffn 32 --ctx 64 --vocab 330 --dtype q8_0 --tied --out $(FUZZ_B)/models-gguf/spm_q8_tied.gguf 2>/dev/null
	@test -f $(FUZZ_B)/models-gguf/gpt2_f16.gguf || $(B)/rill-mkmodel --dim 32 --layers 1 --heads 2 \
	    --ffn 32 --ctx 64 --vocab 280 --dtype f16 --tokenizer gpt2 --out $(FUZZ_B)/models-gguf/gpt2_f16.gguf 2>/dev/null
	@$(call FUZZ_RUN,proto) -max_len=4096 -rss_limit_mb=512 $(FUZZ_B)/corpus-proto tests/fuzz/seeds
	@$(call FUZZ_RUN,request) -max_len=4096 -rss_limit_mb=512 -dict=tests/fuzz/request.dict \
	    $(FUZZ_B)/corpus-request tests/fuzz/seeds-request
	@$(call FUZZ_RUN,http) -max_len=2048 -rss_limit_mb=512 -dict=tests/fuzz/http.dict \
	    $(FUZZ_B)/corpus-http tests/fuzz/seeds-http
	@$(call FUZZ_RUN,gguf) -max_len=65536 -rss_limit_mb=1024 $(FUZZ_B)/corpus-gguf tests/fuzz/seeds-gguf \
	    $(FUZZ_B)/models-gguf
	@$(call FUZZ_RUN,jinja) -max_len=8192 -rss_limit_mb=1024 $(FUZZ_B)/corpus-jinja tests/fuzz/seeds-jinja
	@$(call FUZZ_RUN,oaijson) -max_len=4096 -rss_limit_mb=512 -dict=tests/fuzz/request.dict \
	    $(FUZZ_B)/corpus-oaijson tests/fuzz/seeds-request

# --- chaos and soak (issue 13, part 5) --------------------------------------------
# tools/chaos.py runs the whole pipeline under its supervisor (2 workers, the
# 24M test model) with many clients (JSON and msgpack, greedy and seeded)
# whose connections drop and resume, and checks every request ends complete
# with exactly the standalone worker's tokens.
#   chaos  200 clients, kill -9 of a random worker every 2-5 s, for CHAOS_S;
#          prints kills, resumes, failovers, mismatches, lost and the gap from
#          a kill to the next token, into $(B)/chaos/chaos.json
#   soak   steady load for SOAK_S; RSS and fds of every process at the end
#          of warm-up and at the end (growth < 1%, fds flat), each taken
#          with every client idle and disconnected and nothing kept for a
#          resume (the same state twice), into
#          $(B)/soak/soak.json; check-soak (in `make check`) is 3 minutes.
# Either exits non-zero on any mismatch, loss or failed check; CHAOS_ARGS /
# SOAK_ARGS go to the tool (e.g. "--clients 100 --set restart_window_s 5").
CHAOS_S      ?= 120
SOAK_S       ?= 1800
CHECK_SOAK_S ?= 180
chaos: $(BINS) $(B)/rill-mkmodel
	$(PYTHON) tools/chaos.py chaos --build $(B) --seconds $(CHAOS_S) $(CHAOS_ARGS)

soak: $(BINS) $(B)/rill-mkmodel
	$(PYTHON) tools/chaos.py soak --build $(B) --seconds $(SOAK_S) $(SOAK_ARGS)

check-soak:
	@$(MAKE) --no-print-directory soak SOAK_S=$(CHECK_SOAK_S)

# --- benchmarks ----------------------------------------------------------------
bench: bench-ring bench-engine bench-fanout bench-telemetry

bench-ring: $(B)/ringbench
	@mkdir -p $(B)/bench
	$(B)/ringbench --json $(B)/bench/ring.json

bench-engine: $(B)/rill-bench-engine $(B)/rill-mkmodel
	@mkdir -p $(B)/bench
	$(B)/rill-bench-engine --models-dir $(B)/bench-models --json $(B)/bench/engine.json --kern-json $(B)/bench/kernels.json
	$(B)/rill-bench-engine --models-dir $(B)/bench-models --vs-llama --reps 3 \
	    --vs-json $(B)/bench/vs-llama.json --vs-table $(B)/bench/vs-llama.md

bench-fanout: $(BINS) $(B)/rill-bench
	@mkdir -p $(B)/bench
	tools/bench-fanout.sh $(B)

# What per-token telemetry costs: tokens/s with it on and off, alternating.
bench-telemetry: $(BINS) $(B)/rill-bench $(B)/rill-mkmodel
	@mkdir -p $(B)/bench
	tools/bench-telemetry.sh $(B)

# First token under load: Poisson arrivals (~8-11 in flight) and a burst of 32
# on the 134M F32 model, fresh pipeline each; medians into $(B)/bench/ttft.json.
# BENCH_TTFT_BASE=DIR alternates with DIR's worker and gateway (before/after).
.PHONY: bench-ttft
bench-ttft: $(BINS) $(B)/rill-bench $(B)/rill-mkmodel
	@mkdir -p $(B)/bench
	tools/bench-ttft.sh $(B) $(BENCH_TTFT_BASE)

# What maximum-size prompts arriving do to 8 running streams: their
# inter-token p99 with and without them, into $(B)/bench/longprompt.json.
.PHONY: bench-longprompt
bench-longprompt: $(BINS) $(B)/rill-bench $(B)/rill-mkmodel
	@mkdir -p $(B)/bench
	tools/bench-longprompt.sh $(B)

# The prefix cache: TTFT p50 of requests sharing a 500-token system prompt
# (+ a 20-token user message each, one at a time, 134M f32) with and without
# it, medians of runs, into $(B)/bench/prefix.json (goal: with <= 0.2 x
# without; exits 1 when missed).  BENCH_PREFIX_ARGS: e.g. --runs 5.
.PHONY: bench-prefix
bench-prefix: $(BINS) $(B)/rill-bench $(B)/rill-mkmodel
	@mkdir -p $(B)/bench
	$(PYTHON) tools/bench-prefix.py --build $(B) $(BENCH_PREFIX_ARGS)

# Memory, measured honestly: the whole stack serving 1, 8 and 32 greedy
# streams against the engine alone (rill-bench-memory, given the served
# worker's flags) generating the same sequences; peak RSS (VmHWM) of every
# process summed over the baseline's, the same token ids checked, a breakdown,
# into $(B)/bench/memory.json (exits 1 on different tokens or a ratio above
# 1.10).  BENCH_MEMORY_ARGS: e.g. --max-tokens 128 --threads 2.
.PHONY: bench-memory
bench-memory: $(BINS) $(B)/rill-bench-memory $(B)/rill-mkmodel
	@mkdir -p $(B)/bench
	$(PYTHON) tools/bench-memory.py --build $(B) $(BENCH_MEMORY_ARGS)

# llama.cpp on this machine (node-llama-cpp's prebuilt CPU library, npm-installed
# into $(B)/llcpp-node on first use): pp512/tg128 on the --vs-llama files,
# alternated with rill-bench-engine's, and a burst of 32's first token, into
# $(B)/bench/llamacpp.json.  Not in bench.  BENCH_LLAMACPP_ARGS: e.g. --shapes
# small-134m,llama3-1b --reps 5.
.PHONY: bench-llamacpp
bench-llamacpp: $(B)/rill-bench-engine $(B)/rill-mkmodel
	@mkdir -p $(B)/bench
	node tools/bench-llamacpp.mjs --build $(B) --rill --burst 32 $(BENCH_LLAMACPP_ARGS)

# llama.cpp's llama-bench and llama-server built here from the source that
# npm's node-llama-cpp ships (tools/build-llamacpp.sh; ~15 min once), into
# $(B)/llcpp-src/build/bin.
.PHONY: llamacpp
llamacpp:
	@tools/build-llamacpp.sh $(B) >/dev/null

# TTFT against llama.cpp's llama-server (LLAMA_SERVER=path; by default the one
# `make llamacpp` builds, which it runs first): burst 32 and Poisson, short and
# ~200-token prompts, runs alternated, into $(B)/bench/vs-llamacpp.json.  Not
# in bench.
LLAMA_SERVER ?= $(abspath $(B))/llcpp-src/build/bin/llama-server
.PHONY: bench-vs-llamacpp
bench-vs-llamacpp: $(BINS) $(B)/rill-mkmodel
	@mkdir -p $(B)/bench
	@[ -x "$(LLAMA_SERVER)" ] || tools/build-llamacpp.sh $(B) >/dev/null
	LLAMA_SERVER=$(LLAMA_SERVER) $(PYTHON) tools/bench-vs-llamacpp.py --build $(B) $(BENCH_VS_LLAMACPP_ARGS)

# Regression check: tools/bench-standard.sh runs a shorter standard set (ring,
# engine, fan-out; a few minutes) into $(B)/bench/; bench-save keeps it in
# $(B)/bench-baseline/ (outside git: figures belong to a machine), and
# bench-compare runs it again and compares (BENCH_COMPARE_ARGS, e.g.
# --fail-on-regression or --threshold 15, go to $(B)/bench-compare).
BENCH_STD_BINS := $(BINS) $(B)/ringbench $(B)/rill-bench-engine $(B)/rill-mkmodel $(B)/rill-bench $(B)/bench-compare \
                  $(B)/rill-bench-memory
bench-save: $(BENCH_STD_BINS)
	tools/bench-standard.sh $(B) save
bench-compare: $(BENCH_STD_BINS)
	tools/bench-standard.sh $(B) compare $(BENCH_COMPARE_ARGS)

# --- running ---------------------------------------------------------------------
models/default.gguf: | $(B)/rill-mkmodel
	@mkdir -p models
	$(B)/rill-mkmodel --shape 24M --dtype f32 --out $@

models: models/default.gguf

run: deps
	@$(MAKE) --no-print-directory all models
	deploy/rill-up $(RUN_ARGS)

clean:
	rm -rf build

# Tests that run tools need them built first.
$(B)/tests/test_model: $(B)/rill-mkmodel
$(B)/tests/test_forward: $(B)/rill-mkmodel
$(B)/tests/test_arch: $(B)/rill-mkmodel
$(B)/tests/test_sched: $(B)/rill-mkmodel
$(B)/tests/test_prefix: $(B)/rill-mkmodel
$(B)/tests/test_intake: $(B)/rill-mkmodel
$(B)/tests/test_serve: $(B)/rill-mkmodel
