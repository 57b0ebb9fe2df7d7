# rill — build, test, bench, run.
#
# Every part directory becomes one static library (its main.c excluded); each
# process, tool and unit test links the libraries it needs.  Objects go to
# $(B) (build/ by default) so that sanitizer builds live side by side:
#   make                 release build in build/
#   make test            deps + build + unit tests + end-to-end tests
#   make check           the tests again under ASan+UBSan, the ring under TSan,
#                        and a bounded libFuzzer run of the message decoder
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
LDLIBS   := -lzmq -lwebsockets -lopenblas -lmsgpackc -lcjson -linih -lpcre2-8 -lm -lrt

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

obj = $(patsubst %.c,$(B)/obj/%.o,$(1))

LIB_COMMON     := $(B)/lib/libcommon.a
LIB_WORKER     := $(B)/lib/libworker.a
LIB_GATEWAY    := $(B)/lib/libgateway.a
LIB_SUPERVISOR := $(B)/lib/libsupervisor.a
LIB_TOOLS      := $(B)/lib/libtools.a
ALL_LIBS       := $(LIB_TOOLS) $(LIB_SUPERVISOR) $(LIB_GATEWAY) $(LIB_WORKER) $(LIB_COMMON)

BINS       := $(B)/rill-worker $(B)/rill-gateway $(B)/rill-supervisor
TOOL_BINS  := $(patsubst tools/%.c,$(B)/%,$(TOOL_SRC))
UNIT_BINS  := $(patsubst tests/unit/%.c,$(B)/tests/%,$(UNIT_SRC))

.PHONY: all deps test test-unit test-e2e check check-asan check-tsan fuzz \
        bench bench-ring bench-engine bench-fanout bench-compare run clean models
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
$(ALL_LIBS):
	@mkdir -p $(dir $@)
	@rm -f $@
	$(AR) rcs $@ $^

$(BINS): $(B)/rill-%: $(B)/obj/%/main.o $(ALL_LIBS)
	$(CC) $(LDFLAGS) -o $@ $< $(ALL_LIBS) $(LDLIBS)

$(TOOL_BINS): $(B)/%: $(B)/obj/tools/%.o $(ALL_LIBS)
	$(CC) $(LDFLAGS) -o $@ $< $(ALL_LIBS) $(LDLIBS)

$(UNIT_BINS): $(B)/tests/%: $(B)/obj/tests/unit/%.o $(ALL_LIBS)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $< $(ALL_LIBS) $(LDLIBS) -lcmocka

-include $(shell find $(B)/obj -name '*.d' 2>/dev/null)

# --- dependencies ------------------------------------------------------------
deps:
	@tools/deps.sh

# --- tests -----------------------------------------------------------------
test: deps
	@$(MAKE) --no-print-directory all
	@$(MAKE) --no-print-directory test-unit test-e2e

test-unit: $(UNIT_BINS)
	@tools/run-unit.sh $(B) $(UNIT_BINS)

# RILL_BUILD tells the end-to-end tests which binaries to start.
test-e2e: $(BINS) $(TOOL_BINS)
	RILL_BUILD=$(abspath $(B)) $(PYTHON) -m pytest -q -x tests/e2e $(PYTEST_ARGS)

check: deps
	@$(MAKE) --no-print-directory check-asan check-tsan fuzz

check-asan:
	@$(MAKE) --no-print-directory B=build/asan SAN=asan all
	@$(MAKE) --no-print-directory B=build/asan SAN=asan test-unit test-e2e

# Only the ring (and the thread pool it shares a design with) runs under TSan:
# the rest of the suite is single-threaded or covered by ASan.
check-tsan:
	@$(MAKE) --no-print-directory B=build/tsan SAN=tsan build/tsan/tests/test_ring
	RILL_STRESS_RECORDS=2000000 tools/run-unit.sh build/tsan build/tsan/tests/test_ring

FUZZ_SECONDS ?= 30
fuzz:
	@mkdir -p build/fuzz
	clang -std=gnu11 -g -O1 -D_GNU_SOURCE -I. -Icommon -fsanitize=fuzzer,address,undefined \
	    tests/fuzz/fuzz_proto.c common/proto.c common/err.c -lmsgpackc -o build/fuzz/fuzz_proto
	@mkdir -p build/fuzz/corpus
	build/fuzz/fuzz_proto -max_total_time=$(FUZZ_SECONDS) -max_len=4096 \
	    -rss_limit_mb=512 build/fuzz/corpus tests/fuzz/seeds

# --- benchmarks ----------------------------------------------------------------
bench: bench-ring bench-engine bench-fanout

bench-ring: $(B)/ringbench
	@mkdir -p $(B)/bench
	$(B)/ringbench --json $(B)/bench/ring.json

bench-engine: $(B)/rill-bench-engine $(B)/rill-mkmodel
	@mkdir -p $(B)/bench
	$(B)/rill-bench-engine --models-dir $(B)/bench-models --json $(B)/bench/engine.json

bench-fanout: $(BINS) $(B)/rill-bench
	@mkdir -p $(B)/bench
	tools/bench-fanout.sh $(B)

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
