#!/usr/bin/env bash
# Every RPC protocol a client may use, against freshly started binaries:
# `buf curl` calls CreateOrder, GetOrder and WatchOrder over Connect,
# gRPC-Web and gRPC with a token and must get the same answers; without a
# token each protocol answers unauthenticated; Connect's wire form (error
# JSON and HTTP status) is checked with curl; a CORS preflight from the
# allowed origin succeeds and one from another origin gets no CORS headers.
#
# The binaries run on free ports with their own databases
# (ordermesh_protocols_<id>_orders / _processor), exchange and queues
# (om-test-protocols-<id>.*), all removed at the end, pass or fail.
#
# Knobs:
#   PROTOCOLS_START_TIMEOUT=90  seconds for the binaries to become healthy
#   PROTOCOLS_PG_URL            PostgreSQL server (default TEST_PG_URL, else local)
#   AMQP_URL                    the broker (default: local)
#   ORDERMESH_BIN_DIR=dir       use the binaries in dir instead of building
set -euo pipefail
# shellcheck source=deploy/local/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$OM_ROOT"

start_timeout=${PROTOCOLS_START_TIMEOUT:-90}
om_mesh_prepare protocols "${PROTOCOLS_PG_URL:-${TEST_PG_URL:-postgres://postgres@127.0.0.1:5432/postgres}}"
allowed_origin=http://app.protocols.test:8080
other_origin=http://elsewhere.test

cleanup() {
  local rc=$?
  set +e
  trap '' INT TERM
  om_mesh_teardown
  if ((rc != 0)); then
    printf 'protocols: logs and answers kept in %s\n' "${work#"$OM_ROOT"/}" >&2
  else
    rm -rf "$work"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

start() { om_mesh_start "$@" CORS_ALLOWED_ORIGINS="$allowed_origin"; }

bash deploy/local/tools.sh buf grpcurl
command -v curl >/dev/null || om_die "curl is needed"
om_mesh_binaries
token=$(om_mint_token "$bin_dir" "$auth_secret" protocols admin 3600) ||
  om_die "could not mint a token (processor-svc token)"
start order-svc om_grpc_health "$order_addr"
start processor-svc om_grpc_health "$processor_addr"
start relay om_http_health "$relay_addr"

failures=0
fail() {
  printf 'FAIL: %s\n' "$*" >&2
  failures=$((failures + 1))
}
pass() { printf 'ok: %s\n' "$*"; }

ORDER=ordermesh.order.v1.OrderService
ACCOUNT=ordermesh.payment.v1.AccountService
PROTOCOLS=(connect grpcweb grpc)

# call PROTOCOL ADDR SERVICE/METHOD DATA [buf curl flags...]: the answer on
# stdout, errors on stderr, buf curl's exit code.
call() {
  local protocol=$1 addr=$2 method=$3 data=$4 extra=()
  shift 4
  [[ $protocol == grpc ]] && extra+=(--http2-prior-knowledge)
  timeout 30 "$OM_TOOLS_BIN/buf" curl --schema . --protocol "$protocol" "${extra[@]}" \
    --data "$data" "$@" "http://$addr/$method" </dev/null
}
authed() { call "$@" -H "authorization: Bearer $token"; }

# The JSON documents buf curl printed, with the per-order values (ids and
# times) replaced, as one canonical line: answers of different orders compare.
normalize() {
  python3 -c '
import json, re, sys
text, docs, dec, i = sys.stdin.read(), [], json.JSONDecoder(), 0
while True:
    while i < len(text) and text[i].isspace():
        i += 1
    if i >= len(text):
        break
    doc, i = dec.raw_decode(text, i)
    docs.append(doc)
def scrub(v):
    if isinstance(v, dict):
        return {k: ("<t>" if k.endswith(("Time", "At")) else scrub(x)) for k, x in v.items()}
    if isinstance(v, list):
        return [scrub(x) for x in v]
    if isinstance(v, str):
        return re.sub(r"protocols-order-[a-z]+", "<order>", v)
    return v
print(json.dumps(scrub(docs), sort_keys=True))'
}

om_say "an account for the orders' customer (gRPC)"
authed grpc "$processor_addr" "$ACCOUNT/CreateAccount" '{"customer_id": "carol", "currency_code": "USD"}' >/dev/null ||
  om_die "CreateAccount over gRPC failed"
authed grpc "$processor_addr" "$ACCOUNT/Deposit" '{"customer_id": "carol", "amount_minor": 100000, "deposit_id": "dep-1"}' >/dev/null ||
  om_die "Deposit over gRPC failed"

for p in "${PROTOCOLS[@]}"; do
  om_say "$p: CreateOrder, GetOrder until PAID, WatchOrder"
  order=protocols-order-$p
  if authed "$p" "$order_addr" "$ORDER/CreateOrder" \
    "{\"order_id\": \"$order\", \"customer_id\": \"carol\", \"items\": [{\"sku\": \"lamp\", \"quantity\": 2, \"unit_price_minor\": 1500}]}" \
    >"$work/create-$p.json" 2>"$work/create-$p.err"; then
    normalize <"$work/create-$p.json" >"$work/create-$p.norm"
    grep -q '"totalMinor": "3000"' "$work/create-$p.json" && pass "$p CreateOrder" ||
      fail "$p CreateOrder answered: $(cat "$work/create-$p.json")"
  else
    fail "$p CreateOrder: $(cat "$work/create-$p.err")"
    continue
  fi
  # The payment goes through the relay and the processor: poll.
  deadline=$((SECONDS + 20))
  while :; do
    authed "$p" "$order_addr" "$ORDER/GetOrder" "{\"order_id\": \"$order\"}" \
      >"$work/get-$p.json" 2>"$work/get-$p.err" || true
    grep -q ORDER_STATUS_PAID "$work/get-$p.json" && break
    if ((SECONDS >= deadline)); then
      fail "$p GetOrder: not PAID within 20 s: $(cat "$work/get-$p.json" "$work/get-$p.err")"
      break
    fi
    sleep 0.1
  done
  grep -q ORDER_STATUS_PAID "$work/get-$p.json" && pass "$p GetOrder (PAID)"
  normalize <"$work/get-$p.json" >"$work/get-$p.norm"
  # A PAID order's watch sends the order once and ends.
  if authed "$p" "$order_addr" "$ORDER/WatchOrder" "{\"order_id\": \"$order\"}" \
    >"$work/watch-$p.json" 2>"$work/watch-$p.err"; then
    normalize <"$work/watch-$p.json" >"$work/watch-$p.norm"
    grep -q ORDER_STATUS_PAID "$work/watch-$p.json" && pass "$p WatchOrder" ||
      fail "$p WatchOrder answered: $(cat "$work/watch-$p.json")"
  else
    fail "$p WatchOrder: $(cat "$work/watch-$p.err")"
  fi
done

om_say "the same answers in every protocol"
for what in create get watch; do
  for p in grpcweb grpc; do
    if cmp -s "$work/$what-connect.norm" "$work/$what-$p.norm"; then
      pass "$what: $p = connect"
    else
      fail "$what: $p differs from connect:"$'\n'"$(cat "$work/$what-connect.norm")"$'\n'"$(cat "$work/$what-$p.norm" 2>/dev/null)"
    fi
  done
done
# One order read in every protocol: byte for byte the same.
for p in "${PROTOCOLS[@]}"; do
  authed "$p" "$order_addr" "$ORDER/GetOrder" '{"order_id": "protocols-order-connect"}' \
    >"$work/same-$p.json" 2>&1 || true
done
if cmp -s "$work/same-connect.json" "$work/same-grpcweb.json" &&
  cmp -s "$work/same-connect.json" "$work/same-grpc.json"; then
  pass "one order, three protocols, identical answers"
else
  fail "GetOrder of one order differs between protocols"
fi

om_say "no token: unauthenticated in every protocol"
for p in "${PROTOCOLS[@]}"; do
  if call "$p" "$order_addr" "$ORDER/GetOrder" '{"order_id": "protocols-order-connect"}' \
    >"$work/anon-$p.out" 2>&1; then
    fail "$p without a token succeeded: $(cat "$work/anon-$p.out")"
  elif grep -q unauthenticated "$work/anon-$p.out"; then
    pass "$p without a token: unauthenticated"
  else
    fail "$p without a token: $(cat "$work/anon-$p.out")"
  fi
done

om_say "Connect on the wire (curl)"
# status code, then body
http_call() {
  curl -sS --max-time 10 -o "$work/http.body" -w '%{http_code}' "$@"
}
code=$(http_call -X POST "http://$order_addr/$ORDER/GetOrder" \
  -H 'content-type: application/json' -H 'connect-protocol-version: 1' \
  -H "authorization: Bearer $token" -d '{"orderId": "no-such-order"}')
if [[ $code == 404 ]] && grep -q '"code":"not_found"' "$work/http.body"; then
  pass "Connect unary error: HTTP 404 and {\"code\":\"not_found\",...}"
else
  fail "Connect unary error: HTTP $code $(cat "$work/http.body")"
fi
code=$(http_call -X POST "http://$order_addr/$ORDER/GetOrder" \
  -H 'content-type: application/json' -d '{"orderId": "protocols-order-connect"}')
if [[ $code == 401 ]] && grep -q '"code":"unauthenticated"' "$work/http.body"; then
  pass "Connect without a token: HTTP 401 unauthenticated"
else
  fail "Connect without a token: HTTP $code $(cat "$work/http.body")"
fi

om_say "CORS"
preflight() {
  curl -sS --max-time 10 -o /dev/null -D - -X OPTIONS "http://$order_addr/$ORDER/GetOrder" \
    -H "origin: $1" -H 'access-control-request-method: POST' \
    -H 'access-control-request-headers: authorization,content-type,connect-protocol-version' |
    tr -d '\r' | tr '[:upper:]' '[:lower:]'
}
headers=$(preflight "$allowed_origin")
if grep -q "^access-control-allow-origin: $allowed_origin\$" <<<"$headers" &&
  grep -q '^access-control-allow-headers:.*authorization' <<<"$headers" &&
  grep -q '^http/[0-9.]* 200' <<<"$headers"; then
  pass "preflight from $allowed_origin allowed"
else
  fail "preflight from $allowed_origin: $headers"
fi
headers=$(preflight "$other_origin")
if grep -q '^access-control-allow-origin' <<<"$headers"; then
  fail "preflight from $other_origin was allowed: $headers"
else
  pass "preflight from $other_origin refused (no access-control-allow-origin)"
fi
headers=$(curl -sS --max-time 10 -o /dev/null -D - -X POST "http://$order_addr/$ORDER/GetOrder" \
  -H "origin: $allowed_origin" -H 'content-type: application/json' \
  -H "authorization: Bearer $token" -d '{"orderId": "protocols-order-connect"}' |
  tr -d '\r' | tr '[:upper:]' '[:lower:]')
if grep -q "^access-control-allow-origin: $allowed_origin\$" <<<"$headers" &&
  grep -q '^access-control-expose-headers:.*grpc-status' <<<"$headers"; then
  pass "a call from $allowed_origin carries the CORS answer headers"
else
  fail "a call from $allowed_origin: $headers"
fi

if ((failures > 0)); then
  printf '\nprotocols: %d check(s) failed\n' "$failures" >&2
  exit 1
fi
printf '\nprotocols: every check passed\n'
