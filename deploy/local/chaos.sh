#!/usr/bin/env bash
# make chaos: builds the release binaries once (cargo build --release --bins),
# then runs ordermesh-chaos (chaos/), which starts order-svc, processor-svc and
# relay on free ports with fresh databases (om_test_*) and exchange/queues
# (om-test-*), their AMQP_URL pointing at a fault-injecting TCP proxy, funds
# customers and sends CHAOS_ORDERS orders at CHAOS_RATE/s while it
#   - SIGKILLs the relay and starts it again,
#   - lets processor-svc abort between a settlement's commit and its ack
#     (PROCESSOR_CHAOS_ABORT_AFTER_COMMIT_PERMILLE) and starts it again,
#   - resets every broker connection of the mesh at the proxy,
#   - terminates the mesh's PostgreSQL connections (pg_terminate_backend),
#   - publishes CHAOS_POISON undecodable messages to the processor's queue.
# Then it stops the faults, waits (bounded) until the mesh is quiet, stops it
# and prints the ledger: nothing lost, nothing applied twice, nothing stuck,
# only the poison dead-lettered, and the duplicates the inboxes absorbed.
# Exits 1 on any violation. Everything it created is removed; the binaries'
# logs stay in target/chaos/logs-<seed>/.
#
# Knobs (environment; each is also a flag, see ordermesh-chaos --help):
#   CHAOS_ORDERS=5000                 orders to send
#   CHAOS_RATE=100                    offered rate, orders/s
#   CHAOS_CUSTOMERS=50                customers the orders are spread over
#   CHAOS_FAULT_SECONDS=              how long faults last (default: the load)
#   CHAOS_RELAY_KILL_EVERY=5          mean seconds between relay SIGKILLs (0: off)
#   CHAOS_BROKER_CUT_EVERY=4          mean seconds between broker cuts (0: off)
#   CHAOS_PG_TERMINATE_EVERY=3        mean seconds between PostgreSQL kills (0: off)
#   CHAOS_PROCESSOR_ABORT_PERMILLE=3  processor aborts per 1,000 commits (0: off)
#   CHAOS_POISON=10                   poison messages
#   CHAOS_QUIESCE_SECONDS=90          bound on the wait for quiet after the faults
#   CHAOS_DEADLINE_SECONDS=300        bound on the load
#   CHAOS_SEED=                       repeat a run (the ledger prints its seed)
#   TEST_PG_URL, TEST_AMQP_URL        the servers (default: the local ones)
set -euo pipefail
# shellcheck source=deploy/local/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$OM_ROOT"

export TEST_PG_URL=${TEST_PG_URL:-postgres://postgres@127.0.0.1:5432/postgres}
export TEST_AMQP_URL=${TEST_AMQP_URL:-${AMQP_URL:-$OM_DEFAULT_AMQP_URL}}
bash deploy/local/services.sh TEST_PG_URL="$TEST_PG_URL" TEST_AMQP_URL="$TEST_AMQP_URL"

om_say "building release binaries (cargo build --release --bins)"
cargo build --release --bins
exec "$(om_target_dir)/release/ordermesh-chaos" "$@"
