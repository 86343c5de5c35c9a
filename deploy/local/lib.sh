# shellcheck shell=bash disable=SC2034 # the variables are for the sourcing scripts
# Helpers shared by the scripts in deploy/local. Sourced, never run.
#
# Defaults mirror the services' own (docs/CONTRACTS-internal.md); the scripts
# need them to check the servers and to reach the binaries they start.

OM_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
OM_TOOLS_BIN=$OM_ROOT/.tools/bin
OM_RUN=$OM_ROOT/.run
# The three binaries, in the order they are started (the relay reads the
# databases the services create, so it comes last).
OM_BINARIES=(order-svc processor-svc relay)

OM_DEFAULT_ORDER_DATABASE_URL=postgres://postgres@127.0.0.1:5432/ordermesh_orders
OM_DEFAULT_PROCESSOR_DATABASE_URL=postgres://postgres@127.0.0.1:5432/ordermesh_processor
OM_DEFAULT_AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f
OM_DEFAULT_ORDER_SVC_ADDR=127.0.0.1:50051
OM_DEFAULT_PROCESSOR_SVC_ADDR=127.0.0.1:50052
OM_DEFAULT_RELAY_ADMIN_ADDR=127.0.0.1:9100

# rustup's cargo, when the environment does not have it on PATH.
if ! command -v cargo >/dev/null && [[ -x ${HOME:-/root}/.cargo/bin/cargo ]]; then
  export PATH="${HOME:-/root}/.cargo/bin:$PATH"
fi

om_say() { printf '==> %s\n' "$*"; }

# om_random_secret: 48 hex characters from /dev/urandom (a JWT HS256 secret).
om_random_secret() { od -An -N24 -tx1 /dev/urandom | tr -d ' \n'; }

# om_mint_token BIN_DIR SECRET SUBJECT ROLE [TTL_S]: prints a token signed
# with SECRET by `processor-svc token` (the services verify it with the same
# AUTH_JWT_SECRET).
om_mint_token() {
  AUTH_JWT_SECRET=$2 "$1/processor-svc" token --subject "$3" --role "$4" --ttl-s "${5:-86400}" </dev/null
}
om_warn() { printf 'warning: %s\n' "$*" >&2; }
om_die() {
  printf 'error: %s\n' "$*" >&2
  exit 1
}

# URL without its password, for messages.
om_redact() { sed -E 's#(://[^:/@]*):[^@/]*@#\1:***@#' <<<"$1"; }

# "host port" of a URL (postgres://, amqp://); IPv6 hosts keep no brackets.
om_url_host_port() {
  local url=$1 default_port=$2 authority host port=""
  authority=${url#*://}
  authority=${authority%%[/?]*}
  authority=${authority##*@}
  if [[ $authority =~ ^\[([^]]*)\](:([0-9]+))?$ ]]; then
    host=${BASH_REMATCH[1]}
    port=${BASH_REMATCH[3]}
  else
    host=${authority%%:*}
    [[ $authority == *:* ]] && port=${authority#*:}
  fi
  printf '%s %s\n' "${host:-127.0.0.1}" "${port:-$default_port}"
}

# `url` with its database (path) replaced by `name`, query kept.
om_url_with_db() {
  local url=$1 name=$2 base query="" scheme rest
  base=${url%%\?*}
  [[ $url == *\?* ]] && query="?${url#*\?}"
  scheme=${base%%://*}
  rest=${base#*://}
  printf '%s://%s/%s%s\n' "$scheme" "${rest%%/*}" "$name" "$query"
}

# The RabbitMQ virtual host of an AMQP URL ("/" when the path is empty).
om_amqp_vhost() {
  local url=$1 path=""
  url=${url%%\?*}
  url=${url#*://}
  [[ $url == */* ]] && path=${url#*/}
  [[ -n $path ]] || path=/
  printf '%b\n' "${path//%/\\x}"
}

om_is_local_host() {
  case $1 in
    127.0.0.1 | localhost | ::1 | "") return 0 ;;
    *) return 1 ;;
  esac
}

om_tcp_open() { timeout 2 bash -c ": >/dev/tcp/$1/$2" 2>/dev/null; }

# Target directory of the workspace (honours CARGO_TARGET_DIR and config).
om_target_dir() {
  cargo metadata --format-version 1 --no-deps --manifest-path "$OM_ROOT/Cargo.toml" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])'
}

# True when `pid` is alive and runs the binary `name` (not a recycled pid).
om_pid_alive() {
  local pid=$1 name=$2 argv0
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  argv0=$(tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | head -n 1) || return 1
  [[ ${argv0##*/} == "$name" ]]
}

# Starts `bin` detached (own session, no stdin, output appended to `log`)
# with the current environment plus `env_args` (NAME=VALUE...); prints its pid.
om_spawn() {
  local bin=$1 log=$2
  shift 2
  printf -- '---- %s: starting %s\n' "$(date -u +%FT%TZ)" "$bin" >>"$log"
  env "$@" setsid nohup "$bin" >>"$log" 2>&1 </dev/null &
  local pid=$! i argv0
  # The pid is env's, then nohup's, until they exec the binary: wait (up to
  # 2 s) so callers that check the process by name see the binary.
  for ((i = 0; i < 200; i++)); do
    argv0=$(tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | head -n 1) || break
    [[ ${argv0##*/} == "${bin##*/}" ]] && break
    sleep 0.01
  done
  printf '%s\n' "$pid"
}

# Sends SIGTERM to every "name:pid" given, waits up to `timeout` seconds for
# all of them, then SIGKILLs what is left.
om_stop_all() {
  local timeout=$1 entry name pid deadline left
  shift
  for entry in "$@"; do
    name=${entry%%:*} pid=${entry#*:}
    om_pid_alive "$pid" "$name" && kill -TERM "$pid" 2>/dev/null || true
  done
  deadline=$((SECONDS + timeout))
  while :; do
    left=()
    for entry in "$@"; do
      name=${entry%%:*} pid=${entry#*:}
      om_pid_alive "$pid" "$name" && left+=("$entry")
    done
    ((${#left[@]} > 0)) || return 0
    if ((SECONDS >= deadline)); then
      for entry in "${left[@]}"; do
        name=${entry%%:*} pid=${entry#*:}
        om_warn "$name (pid $pid) did not stop within ${timeout}s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
      done
      return 0
    fi
    sleep 0.2
  done
}

# gRPC health of the server at `addr`: prints the status (SERVING, ...) and
# succeeds only for SERVING. Uses a local copy of health.proto, so the check
# does not depend on what the server's reflection lists.
om_grpc_health() {
  local out
  out=$("$OM_TOOLS_BIN/grpcurl" -plaintext -max-time 3 -connect-timeout 2 \
    -import-path "$OM_ROOT/scripts" -proto health.proto \
    "$1" grpc.health.v1.Health/Check 2>&1) || {
    printf '%s\n' "$out"
    return 1
  }
  printf '%s\n' "$out"
  [[ $out == *'"SERVING"'* ]]
}

om_http_health() { curl -fsS --max-time 3 "http://$1/healthz" 2>&1; }

# The lines `log` got since its last "---- ...: starting" header, at most 40.
om_log_tail() {
  tac "$1" 2>/dev/null | sed '/^---- .*: starting /q' | tac | tail -n 40
}

# Waits until `check addr` succeeds while the process `name:pid` lives, at the
# latest until `deadline` (a $SECONDS value). On failure prints why and the
# tail of `log`, and returns 1.
om_wait_healthy() {
  local name=$1 pid=$2 log=$3 check=$4 addr=$5 deadline=$6 out=""
  while :; do
    if out=$("$check" "$addr"); then
      return 0
    fi
    if ! om_pid_alive "$pid" "$name"; then
      printf 'error: %s (pid %s) exited before it was healthy. Last lines of %s:\n' \
        "$name" "$pid" "${log#"$OM_ROOT"/}" >&2
      om_log_tail "$log" >&2
      return 1
    fi
    if ((SECONDS >= deadline)); then
      printf 'error: %s (pid %s) not healthy at %s in time; last check said: %s\nLast lines of %s:\n' \
        "$name" "$pid" "$addr" "$out" "${log#"$OM_ROOT"/}" >&2
      om_log_tail "$log" >&2
      return 1
    fi
    sleep 0.2
  done
}

# rabbitmqctl that never waits long and never reads stdin.
om_rabbitmqctl() { timeout 60 rabbitmqctl "$@" </dev/null; }

# Deletes the RabbitMQ queues and exchanges of `vhost` whose names start with
# `prefix`. Tolerates a missing rabbitmqctl (warns, returns 0).
om_rabbit_delete_prefix() {
  local vhost=$1 prefix=$2 queues exchanges name
  local doomed_q=() doomed_x=()
  if ! command -v rabbitmqctl >/dev/null; then
    om_warn "rabbitmqctl not found: RabbitMQ queues/exchanges '${prefix}*' not deleted"
    return 0
  fi
  if ! queues=$(om_rabbitmqctl -q -p "$vhost" list_queues --no-table-headers name 2>&1) ||
    ! exchanges=$(om_rabbitmqctl -q -p "$vhost" list_exchanges --no-table-headers name 2>&1); then
    om_warn "rabbitmqctl cannot list queues/exchanges (${queues}${exchanges:-}): '${prefix}*' not deleted"
    return 0
  fi
  while IFS= read -r name; do
    [[ $name == "$prefix"* ]] && doomed_q+=("$name")
  done <<<"$queues"
  while IFS= read -r name; do
    [[ $name == "$prefix"* ]] && doomed_x+=("$name")
  done <<<"$exchanges"
  for name in "${doomed_q[@]}"; do
    om_rabbitmqctl -q -p "$vhost" delete_queue "$name" >/dev/null 2>&1 ||
      om_warn "could not delete queue $name"
  done
  if ((${#doomed_x[@]} > 0)); then
    # rabbitmqctl has no delete_exchange; rabbit_exchange:delete/3 is what
    # the management API calls.
    local erl_vhost list="" sep=""
    erl_vhost=${vhost//\\/\\\\}
    erl_vhost=${erl_vhost//\"/\\\"}
    for name in "${doomed_x[@]}"; do
      name=${name//\\/\\\\}
      list+="$sep<<\"${name//\"/\\\"}\">>"
      sep=", "
    done
    om_rabbitmqctl -q eval "[rabbit_exchange:delete(rabbit_misc:r(<<\"$erl_vhost\">>, exchange, N), false, <<\"ordermesh-scripts\">>) || N <- [$list]]." >/dev/null 2>&1 ||
      om_warn "could not delete exchanges: ${doomed_x[*]}"
  fi
  printf 'RabbitMQ (vhost %s): deleted %d queue(s), %d exchange(s) named %s*\n' \
    "$vhost" "${#doomed_q[@]}" "${#doomed_x[@]}" "$prefix"
}

# Prints `count` free local TCP ports, all different (bound at once, then
# released).
om_free_ports() {
  python3 - "$1" <<'PY'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
PY
}

# The environment of a throw-away mesh's three binaries, one NAME=VALUE per
# line, from the caller's order_addr, processor_addr, relay_addr, pg_server,
# order_db, processor_db, amqp_url, prefix and auth_secret.
om_mesh_env() {
  local orders processor
  orders=$(om_url_with_db "$pg_server" "$order_db")
  processor=$(om_url_with_db "$pg_server" "$processor_db")
  printf '%s\n' \
    "ORDER_SVC_ADDR=$order_addr" \
    "PROCESSOR_SVC_ADDR=$processor_addr" \
    "RELAY_ADMIN_ADDR=$relay_addr" \
    "ORDER_DATABASE_URL=$orders" \
    "PROCESSOR_DATABASE_URL=$processor" \
    "RELAY_SOURCES=$orders,$processor" \
    "AMQP_URL=$amqp_url" \
    "AMQP_EXCHANGE=$prefix.events" \
    "ORDER_QUEUE=$prefix.order-svc.payment-results" \
    "PROCESSOR_QUEUE=$prefix.processor-svc.order-created" \
    "AUTH_JWT_SECRET=$auth_secret"
}

# Names a throw-away mesh for a script of `kind` (smoke, protocols, rest),
# on the PostgreSQL server of `server_url`: sets id, order/processor/relay
# _port and _addr, work (its directory, created), pg_server, amqp_url,
# order_db, processor_db, prefix, auth_secret and an empty `started`, which
# om_mesh_env, om_mesh_start and om_mesh_teardown use.
om_mesh_prepare() {
  local kind=$1 server_url=$2
  id=$(python3 -c 'import secrets; print(secrets.token_hex(4))')
  read -r order_port processor_port relay_port <<<"$(om_free_ports 3)"
  order_addr=127.0.0.1:$order_port
  processor_addr=127.0.0.1:$processor_port
  relay_addr=127.0.0.1:$relay_port
  work=$OM_RUN/$kind-$id
  mkdir -p "$work"
  pg_server=$(om_url_with_db "$server_url" postgres)
  amqp_url=${AMQP_URL:-$OM_DEFAULT_AMQP_URL}
  order_db=ordermesh_${kind}_${id}_orders
  processor_db=ordermesh_${kind}_${id}_processor
  prefix=om-test-$kind-$id
  auth_secret=$(om_random_secret)
  started=()
}

# Sets bin_dir: ORDERMESH_BIN_DIR, or a fresh debug build of the workspace.
om_mesh_binaries() {
  if [[ -n ${ORDERMESH_BIN_DIR:-} ]]; then
    bin_dir=$(cd "$ORDERMESH_BIN_DIR" && pwd)
  else
    om_say "building debug binaries (cargo build --bins)"
    cargo build --workspace --bins
    bin_dir=$(om_target_dir)/debug
  fi
}

# om_mesh_start NAME CHECK ADDR [VAR=VALUE...]: starts $bin_dir/NAME with
# om_mesh_env and the extra variables, logging to $work/NAME.log, adds it to
# `started`, and waits up to $start_timeout s until CHECK ADDR passes.
om_mesh_start() {
  local name=$1 check=$2 addr=$3 pid mesh_env
  shift 3
  [[ -x $bin_dir/$name ]] || om_die "$bin_dir/$name is missing: the build did not produce it"
  mapfile -t mesh_env < <(om_mesh_env)
  pid=$(om_spawn "$bin_dir/$name" "$work/$name.log" "${mesh_env[@]}" "$@")
  started+=("$name:$pid")
  om_wait_healthy "$name" "$pid" "$work/$name.log" "$check" "$addr" "$((SECONDS + start_timeout))" ||
    return 1
  om_say "$name is healthy on $addr (pid $pid)"
}

# Stops what om_mesh_start started and removes the mesh's databases and
# broker names.
om_mesh_teardown() {
  if ((${#started[@]} > 0)); then
    om_stop_all 15 "${started[@]}"
  fi
  om_drop_databases "$pg_server" "$order_db" "$processor_db"
  om_rabbit_delete_prefix "$(om_amqp_vhost "$amqp_url")" "$prefix." >/dev/null
}

# Drops the databases named after `server` (a PostgreSQL URL), warning about
# any it cannot drop.
om_drop_databases() {
  local server=$1 db
  shift
  if ! command -v psql >/dev/null; then
    om_warn "psql not found: databases $* not dropped"
    return 0
  fi
  for db in "$@"; do
    PGOPTIONS="-c client_min_messages=warning" psql "$server" -wXqAt -v ON_ERROR_STOP=1 \
      -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null ||
      om_warn "could not drop database $db"
  done
}
