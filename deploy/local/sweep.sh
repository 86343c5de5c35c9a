#!/usr/bin/env bash
# make sweep: removes what killed test runs left behind on the local servers:
#   - PostgreSQL databases om_test_% (ordermesh-testkit) and ordermesh_smoke_%
#     (readme-smoke.sh) that nobody is connected to and that are older than
#     SWEEP_MIN_AGE seconds (default 120);
#   - RabbitMQ queues and exchanges om-test-*, but only while no client other
#     than the binaries of 'make up' is connected to the broker (queue names
#     tell neither age nor owner, so an open connection may be a test run
#     that still needs its queues).
# What a run still in progress uses is left alone, so a sweep is safe while
# other tests run. Servers: TEST_PG_URL and TEST_AMQP_URL (then AMQP_URL),
# else the local ones. A missing psql or rabbitmqctl is a warning.
set -euo pipefail
# shellcheck source=deploy/local/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

min_age=${SWEEP_MIN_AGE:-120}
[[ $min_age =~ ^[0-9]+$ ]] || om_die "SWEEP_MIN_AGE must be a number of seconds, got '$min_age'"
pg_server=$(om_url_with_db "${TEST_PG_URL:-postgres://postgres@127.0.0.1:5432/postgres}" postgres)
amqp_url=${TEST_AMQP_URL:-${AMQP_URL:-$OM_DEFAULT_AMQP_URL}}

sweep_postgres() {
  local leftovers dbs db dropped=0 kept=0 age_sql
  if ! command -v psql >/dev/null; then
    om_warn "psql not found: test databases not swept"
    return 0
  fi
  age_sql="coalesce(now() - (pg_stat_file('base/' || d.oid || '/PG_VERSION', true)).modification
                    >= make_interval(secs => $min_age), true)"
  # Creation time needs pg_stat_file (superuser); without it, go by connections alone.
  if ! psql "$pg_server" -wXAtq -c "select $age_sql from pg_database d limit 1" >/dev/null 2>&1; then
    age_sql=true
  fi
  if ! leftovers=$(psql "$pg_server" -wXAtq -v ON_ERROR_STOP=1 -c "
      select datname,
             not exists (select 1 from pg_stat_activity a where a.datid = d.oid) and $age_sql
        from pg_database d
       where datname like 'om\_test\_%' or datname like 'ordermesh\_smoke\_%'
       order by 1" 2>&1); then
    om_warn "cannot list databases on $(om_redact "$pg_server"): $leftovers"
    return 0
  fi
  dbs=()
  while IFS='|' read -r db doomed; do
    [[ -n $db ]] || continue
    if [[ $doomed == t ]]; then dbs+=("$db"); else kept=$((kept + 1)); fi
  done <<<"$leftovers"
  for db in "${dbs[@]}"; do
    # No FORCE: a database someone just connected to stays.
    if psql "$pg_server" -wXAtq -c "DROP DATABASE IF EXISTS \"$db\"" >/dev/null 2>&1; then
      dropped=$((dropped + 1))
    else
      kept=$((kept + 1))
    fi
  done
  printf 'PostgreSQL: dropped %d leftover test database(s); left %d in use or younger than %ss\n' \
    "$dropped" "$kept" "$min_age"
}

# Prints how many broker connections belong to a process other than the ones
# 'make up' started (a peer we cannot trace to a local process counts too).
foreign_connections() {
  local conns host port pid count=0 name
  local -A ours=()
  for name in "${OM_BINARIES[@]}"; do
    pid=$(cat "$OM_RUN/$name.pid" 2>/dev/null || true)
    om_pid_alive "$pid" "$name" && ours[$pid]=1
  done
  conns=$(om_rabbitmqctl -q list_connections --no-table-headers peer_host peer_port) || return 1
  while read -r host port; do
    [[ -n ${port:-} ]] || continue
    pid=""
    if om_is_local_host "$host" && command -v ss >/dev/null; then
      pid=$(ss -Htnp state established "( sport = :$port )" 2>/dev/null |
        grep -o 'pid=[0-9]*' | head -n 1 || true)
      pid=${pid#pid=}
    fi
    [[ -n $pid && -n ${ours[$pid]:-} ]] || count=$((count + 1))
  done <<<"$conns"
  printf '%s\n' "$count"
}

sweep_rabbitmq() {
  local foreign
  if ! command -v rabbitmqctl >/dev/null; then
    om_warn "rabbitmqctl not found: RabbitMQ queues/exchanges om-test-* not swept"
    return 0
  fi
  if ! foreign=$(foreign_connections); then
    om_warn "rabbitmqctl cannot list connections: RabbitMQ not swept"
    return 0
  fi
  if ((foreign > 0)); then
    printf 'RabbitMQ: %d client connection(s) open, maybe a test run in progress: om-test-* left alone\n' "$foreign"
    return 0
  fi
  om_rabbit_delete_prefix "$(om_amqp_vhost "$amqp_url")" om-test-
}

sweep_postgres
sweep_rabbitmq
