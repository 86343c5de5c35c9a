#!/usr/bin/env bash
# make bench: builds the release binaries once (cargo build --release --bins),
# then runs ordermesh-bench (bench/), which starts order-svc, processor-svc and
# relay on free ports with fresh databases (om_test_*) and exchange/queues
# (om-test-*), funds customers, drives CreateOrder open-loop at fixed rates,
# searches for the highest sustained rate, measures this machine's own
# PostgreSQL and RabbitMQ limits in the same run, tears everything down and
# writes target/bench/: report.json, latency.svg, logs/ and, when perf is
# available, flamegraph-*.svg. docs/BENCH.md says what each figure means.
#
# Knobs (environment):
#   BENCH_RATES=200,1000        fixed offered rates, orders/s
#   BENCH_STEP_SECONDS=10       seconds of load per step
#   BENCH_SEARCH_STEPS=6        steps of the search for the maximum (0: none)
#   BENCH_P99_BOUND_MS=100      a step is sustained only under this e2e p99 ...
#   BENCH_DRAIN_BOUND_S=3       ... with every order settled this long after the last request
#   BENCH_PROFILE=1             perf flamegraphs of the profile step (default: 1 when perf runs)
#   BENCH_PUBLISH_DIR=docs/img  also copy the plot there (bench-latency.svg)
#   TEST_PG_URL, TEST_AMQP_URL  the servers (default: the local ones)
set -euo pipefail
# shellcheck source=deploy/local/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$OM_ROOT"

export TEST_PG_URL=${TEST_PG_URL:-postgres://postgres@127.0.0.1:5432/postgres}
export TEST_AMQP_URL=${TEST_AMQP_URL:-${AMQP_URL:-$OM_DEFAULT_AMQP_URL}}
bash deploy/local/services.sh TEST_PG_URL="$TEST_PG_URL" TEST_AMQP_URL="$TEST_AMQP_URL"

if [[ -z ${BENCH_PROFILE:-} ]]; then
  if perf --version >/dev/null 2>&1; then
    export BENCH_PROFILE=1
  else
    om_warn "perf not found (Debian: apt-get install linux-perf): no flamegraphs this run"
  fi
elif [[ $BENCH_PROFILE == 0 ]]; then
  unset BENCH_PROFILE
fi

om_say "building release binaries (cargo build --release --bins)"
cargo build --release --bins
exec "$(om_target_dir)/release/ordermesh-bench" "$@"
