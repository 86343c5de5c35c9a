#!/usr/bin/env bash
# make up: runs ordermesh on this machine, without containers.
#
#  1. checks PostgreSQL (ORDER_DATABASE_URL, PROCESSOR_DATABASE_URL) and
#     RabbitMQ (AMQP_URL); on Debian/Ubuntu as root it installs and starts a
#     local one that is missing, elsewhere it says what to do;
#  2. builds the release binaries and runs both `migrate` subcommands;
#  3. starts order-svc, processor-svc and relay in the background (logs in
#     .run/logs/<name>.log, pids in .run/<name>.pid), leaving alone any that
#     already runs, and waits until each is healthy;
#  4. prints how to call them. The services verify bearer tokens with
#     AUTH_JWT_SECRET: unless it is set, a random one is made once and kept
#     in .run/auth-secret; an admin token signed with it is written to
#     .run/admin.token (valid 7 days, renewed by every `make up`).
#
# Every variable of the services (ORDER_SVC_ADDR, AMQP_EXCHANGE, RUST_LOG,
# ...) passes through to the binaries. Script knobs:
#   UP_TIMEOUT=60           seconds to wait for the three to become healthy
#   ORDERMESH_BIN_DIR=dir   use the binaries in dir instead of building
set -euo pipefail
# shellcheck source=deploy/local/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$OM_ROOT"

export ORDER_DATABASE_URL=${ORDER_DATABASE_URL:-$OM_DEFAULT_ORDER_DATABASE_URL}
export PROCESSOR_DATABASE_URL=${PROCESSOR_DATABASE_URL:-$OM_DEFAULT_PROCESSOR_DATABASE_URL}
export AMQP_URL=${AMQP_URL:-$OM_DEFAULT_AMQP_URL}
# The relay drains the two databases above unless told otherwise.
export RELAY_SOURCES=${RELAY_SOURCES:-$ORDER_DATABASE_URL,$PROCESSOR_DATABASE_URL}
order_addr=${ORDER_SVC_ADDR:-$OM_DEFAULT_ORDER_SVC_ADDR}
processor_addr=${PROCESSOR_SVC_ADDR:-$OM_DEFAULT_PROCESSOR_SVC_ADDR}
relay_addr=${RELAY_ADMIN_ADDR:-$OM_DEFAULT_RELAY_ADMIN_ADDR}
timeout=${UP_TIMEOUT:-60}

bash "$OM_ROOT/deploy/local/tools.sh" grpcurl
command -v curl >/dev/null || om_die "curl is needed for the relay health check (apt-get install -y curl)"

om_say "checking PostgreSQL and RabbitMQ"
bash "$OM_ROOT/deploy/local/services.sh" ORDER_DATABASE_URL="$ORDER_DATABASE_URL" \
  PROCESSOR_DATABASE_URL="$PROCESSOR_DATABASE_URL" AMQP_URL="$AMQP_URL"

if [[ -n ${ORDERMESH_BIN_DIR:-} ]]; then
  bin_dir=$(cd "$ORDERMESH_BIN_DIR" && pwd)
else
  om_say "building release binaries (cargo build --release --bins)"
  cargo build --release --workspace --bins
  bin_dir=$(om_target_dir)/release
fi
for name in "${OM_BINARIES[@]}"; do
  [[ -x $bin_dir/$name ]] || om_die "$bin_dir/$name is missing: the build did not produce the $name binary"
done

mkdir -p "$OM_RUN/logs"
if [[ -z ${AUTH_JWT_SECRET:-} ]]; then
  if [[ ! -s $OM_RUN/auth-secret ]]; then
    (umask 077 && om_random_secret >"$OM_RUN/auth-secret")
    om_say "made a local token signing secret in .run/auth-secret"
  fi
  AUTH_JWT_SECRET=$(<"$OM_RUN/auth-secret")
  export AUTH_JWT_SECRET
fi
(umask 077 && om_mint_token "$bin_dir" "$AUTH_JWT_SECRET" admin admin 604800 >"$OM_RUN/admin.token") ||
  om_die "could not mint the admin token (processor-svc token)"

om_say "migrating (order-svc migrate, processor-svc migrate; output in .run/logs/migrate.log)"
for name in order-svc processor-svc; do
  printf -- '---- %s: starting %s migrate\n' "$(date -u +%FT%TZ)" "$name" >>"$OM_RUN/logs/migrate.log"
  if ! "$bin_dir/$name" migrate >>"$OM_RUN/logs/migrate.log" 2>&1 </dev/null; then
    om_log_tail "$OM_RUN/logs/migrate.log" >&2
    om_die "$name migrate failed (ORDER_DATABASE_URL=$(om_redact "$ORDER_DATABASE_URL"), PROCESSOR_DATABASE_URL=$(om_redact "$PROCESSOR_DATABASE_URL")); its output is above"
  fi
done

declare -A pids=()
for name in "${OM_BINARIES[@]}"; do
  pidfile=$OM_RUN/$name.pid
  pid=$(cat "$pidfile" 2>/dev/null || true)
  if om_pid_alive "$pid" "$name"; then
    om_say "$name already runs (pid $pid); left alone ('make down' first to restart it)"
  else
    rm -f "$pidfile"
    pid=$(om_spawn "$bin_dir/$name" "$OM_RUN/logs/$name.log")
    printf '%s\n' "$pid" >"$pidfile"
    om_say "started $name (pid $pid)"
  fi
  pids[$name]=$pid
done

om_say "waiting for health (up to ${timeout}s)"
deadline=$((SECONDS + timeout))
failed=0
om_wait_healthy order-svc "${pids[order-svc]}" "$OM_RUN/logs/order-svc.log" om_grpc_health "$order_addr" "$deadline" || failed=1
om_wait_healthy processor-svc "${pids[processor-svc]}" "$OM_RUN/logs/processor-svc.log" om_grpc_health "$processor_addr" "$deadline" || failed=1
om_wait_healthy relay "${pids[relay]}" "$OM_RUN/logs/relay.log" om_http_health "$relay_addr" "$deadline" || failed=1
if ((failed)); then
  printf "\nWhatever started was left running: 'make down' stops it, 'make logs' follows the logs.\n" >&2
  exit 1
fi

id=$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')
cat <<EOF

ordermesh is up:
  order-svc      gRPC $order_addr   pid ${pids[order-svc]}   log .run/logs/order-svc.log
  processor-svc  gRPC $processor_addr   pid ${pids[processor-svc]}   log .run/logs/processor-svc.log
  relay          http://$relay_addr/healthz   pid ${pids[relay]}   log .run/logs/relay.log

An admin token (acts for every customer) is in .run/admin.token. Call it
with grpcurl (installed in .tools/bin):
  export PATH="$OM_TOOLS_BIN:\$PATH" TOKEN=\$(cat .run/admin.token)
  grpcurl -plaintext $order_addr list
  grpcurl -plaintext -H "authorization: Bearer \$TOKEN" -d '{"customer_id": "alice-$id"}' $processor_addr ordermesh.payment.v1.AccountService/CreateAccount
  grpcurl -plaintext -H "authorization: Bearer \$TOKEN" -d '{"customer_id": "alice-$id", "amount_minor": 5000}' $processor_addr ordermesh.payment.v1.AccountService/Deposit
  grpcurl -plaintext -H "authorization: Bearer \$TOKEN" -d '{"order_id": "order-$id", "customer_id": "alice-$id", "items": [{"sku": "book", "quantity": 2, "unit_price_minor": 1250}]}' $order_addr ordermesh.order.v1.OrderService/CreateOrder
  grpcurl -plaintext -H "authorization: Bearer \$TOKEN" -d '{"order_id": "order-$id"}' $order_addr ordermesh.order.v1.OrderService/GetOrder

A customer token: register a new customer id (an id that already has an
account is refused), then log in (the answer's accessToken):
  grpcurl -plaintext -d '{"customer_id": "dave-$id", "password": "correct horse battery"}' $processor_addr ordermesh.auth.v1.AuthService/Register
  grpcurl -plaintext -d '{"customer_id": "dave-$id", "password": "correct horse battery"}' $processor_addr ordermesh.auth.v1.AuthService/Login

'make logs' follows the logs; 'make down' stops the three.
EOF
