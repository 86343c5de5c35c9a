#!/usr/bin/env bash
# REST checks against freshly started binaries (order-svc, processor-svc):
#
#   1. schemathesis (PyPI) fuzzes each service from its own /openapi.json
#      and fails on any 5xx or any answer that breaks the document (status
#      code, content type, headers, body schema, Allow on 405).
#   2. headless Chromium opens each service's /docs (Swagger UI, bundled in
#      the binary) with every outside host unresolvable, checks that every
#      operation of /openapi.json is listed, and saves a screenshot of
#      order-svc's page to docs/img/rest-docs.png (the README shows it).
#   3. headless Chromium opens deploy/local/fixtures/sse-watch.html, which
#      watches an order (account, deposit and order made here over REST
#      with the admin token) with the browser's own EventSource, and must
#      show it PAID. EventSource cannot send Authorization: the page is
#      served by fixtures/sse-proxy.py, which passes /v1/ to order-svc on
#      the same origin and adds the token, as an ingress would.
#
# Not checked by schemathesis, on purpose: positive_data_acceptance and
# negative_data_rejection. The document is derived from the protos, which
# say nothing of the services' business validation (a schema-valid order
# with no items is still refused), and proto3 JSON accepts null for any
# field (the default value), which the schemas do not spell out.
#
# The binaries run on free ports with their own databases
# (ordermesh_rest_<id>_orders / _processor) and broker names
# (om-test-rest-<id>.*); everything is removed at the end, pass or fail.
#
# Knobs:
#   REST_CHECKS_MAX_EXAMPLES=100  schemathesis test cases per operation
#   REST_CHECKS_TIMEOUT=180       seconds schemathesis may take per service
#   REST_CHECKS_SEED=n            hypothesis seed; random by default, fixed
#                                 (1) when CI=true so a CI verdict can be
#                                 replayed; a failure prints its seed either way
#   REST_CHECKS_SCREENSHOT=docs/img/rest-docs.png   where the screenshot goes
#   SMOKE_PG_URL / TEST_PG_URL    PostgreSQL server (default: local)
#   AMQP_URL                      the broker (default: local)
#   ORDERMESH_BIN_DIR=dir         use the binaries in dir instead of building
set -euo pipefail
# shellcheck source=deploy/local/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$OM_ROOT"

max_examples=${REST_CHECKS_MAX_EXAMPLES:-100}
seed_args=()
if [[ -n ${REST_CHECKS_SEED:-} ]]; then
  seed_args=(--seed "$REST_CHECKS_SEED")
elif [[ ${CI:-} == true ]]; then
  seed_args=(--seed 1)
fi
fuzz_timeout=${REST_CHECKS_TIMEOUT:-180}
screenshot=${REST_CHECKS_SCREENSHOT:-docs/img/rest-docs.png}
start_timeout=90

bash deploy/local/tools.sh schemathesis chromium
command -v curl >/dev/null || om_die "curl is needed to fetch /openapi.json"

# The services verify tokens with the mesh's auth_secret; schemathesis
# sends an admin token (admins are not rate limited) minted with it.
om_mesh_prepare rest "${SMOKE_PG_URL:-${TEST_PG_URL:-postgres://postgres@127.0.0.1:5432/postgres}}"

cleanup() {
  local rc=$?
  set +e
  trap '' INT TERM
  om_mesh_teardown
  if ((rc == 0)); then
    rm -rf "$work"
  else
    printf 'rest-checks: logs and reports kept in %s\n' "${work#"$OM_ROOT"/}" >&2
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

om_mesh_binaries
om_mesh_start order-svc om_grpc_health "$order_addr"
om_mesh_start processor-svc om_grpc_health "$processor_addr"

failed=()

# --- schemathesis -----------------------------------------------------------
admin_token=$(om_mint_token "$bin_dir" "$auth_secret" admin admin 3600) ||
  om_die "could not mint the admin token (processor-svc token)"
for entry in "order-svc=$order_addr" "processor-svc=$processor_addr"; do
  name=${entry%%=*} addr=${entry#*=}
  om_say "schemathesis: $name (http://$addr/openapi.json, $max_examples examples per operation)"
  mkdir -p "$work/schemathesis-$name"
  # Run from the work directory: hypothesis keeps its database in the cwd.
  if ! (cd "$work/schemathesis-$name" && timeout "$fuzz_timeout" \
    "$OM_TOOLS_BIN/schemathesis" run "http://$addr/openapi.json" \
    --checks all \
    --exclude-checks positive_data_acceptance,negative_data_rejection \
    --max-examples "$max_examples" "${seed_args[@]}" \
    --header "Authorization: Bearer $admin_token" \
    --request-timeout 10 \
    --wait-for-schema 10 \
    --warnings off \
    --no-color </dev/null); then
    failed+=("schemathesis found problems in $name (or ran out of ${fuzz_timeout}s)")
  fi
done

# --- the docs page in headless Chromium ---------------------------------------
# Every host but 127.0.0.1 is unresolvable: the page must not need the internet.
chromium_run() {
  timeout 90 chromium --headless --no-sandbox --disable-gpu \
    --disable-background-networking --disable-component-update --disable-sync \
    --no-first-run --hide-scrollbars --user-data-dir="$work/chromium" \
    --host-resolver-rules="MAP * ~NOTFOUND, EXCLUDE 127.0.0.1" \
    --virtual-time-budget=15000 "$@" 2>>"$work/chromium.log" </dev/null
}

for entry in "order-svc=$order_addr" "processor-svc=$processor_addr"; do
  name=${entry%%=*} addr=${entry#*=}
  om_say "chromium: http://$addr/docs lists every operation of /openapi.json"
  curl -fsS --max-time 10 "http://$addr/openapi.json" >"$work/$name.openapi.json"
  if ! chromium_run --dump-dom "http://$addr/docs" >"$work/$name.docs.html"; then
    failed+=("chromium could not load the docs page of $name")
    continue
  fi
  if ! python3 - "$work/$name.openapi.json" "$work/$name.docs.html" <<'PY'; then
import html, json, sys
doc = json.load(open(sys.argv[1]))
page = html.unescape(open(sys.argv[2]).read())
missing = []
count = 0
for path, item in doc["paths"].items():
    for method, op in item.items():
        count += 1
        anchor = f'href="#/{op["tags"][0]}/{op["operationId"]}"'
        if f'data-path="{path}"' not in page or anchor not in page:
            missing.append(f"{method.upper()} {path} ({op['operationId']})")
if count == 0:
    sys.exit("the document has no operations")
if missing:
    sys.exit("operations not shown on /docs: " + ", ".join(missing))
print(f"    all {count} operations are listed")
PY
    failed+=("the docs page of $name does not list every operation")
  fi
done

om_say "chromium: screenshot of order-svc's /docs -> $screenshot"
mkdir -p "$(dirname "$screenshot")"
if chromium_run --window-size=1280,900 --screenshot="$work/rest-docs.png" "http://$order_addr/docs" >/dev/null &&
  [[ -s $work/rest-docs.png ]]; then
  cp "$work/rest-docs.png" "$screenshot"
else
  failed+=("no screenshot of the docs page")
fi

# --- WatchOrder over EventSource in headless Chromium -------------------------
om_say "chromium: a page watches an order with EventSource until it is PAID"
sse_customer=sse-$id
sse_order=sse-$id-order
# rest_post ADDR PATH JSON: one REST call with the admin token.
rest_post() {
  curl -fsS --max-time 10 -H "authorization: Bearer $admin_token" \
    -H 'content-type: application/json' --data "$3" "http://$1$2" >>"$work/sse-setup.log" &&
    printf '\n' >>"$work/sse-setup.log"
}
sse_check() {
  local port_file=$work/sse-proxy.port token_file=$work/sse-proxy.token
  local dom=$work/sse-watch.dom.html pid port deadline browser seen
  # No relay yet: the order stays PENDING until the page is watching it.
  rest_post "$processor_addr" /v1/accounts "{\"customerId\": \"$sse_customer\"}" &&
    rest_post "$processor_addr" "/v1/accounts/$sse_customer:deposit" \
      '{"amountMinor": "1000", "depositId": "sse-1"}' &&
    rest_post "$order_addr" /v1/orders "{\"orderId\": \"$sse_order\", \"customerId\": \"$sse_customer\",
      \"items\": [{\"sku\": \"pen\", \"quantity\": 1, \"unitPriceMinor\": \"300\"}]}" || {
    echo "    could not create the account, deposit and order (see sse-setup.log)"
    return 1
  }
  (umask 077 && printf '%s\n' "$admin_token" >"$token_file")
  pid=$(om_spawn "$OM_ROOT/deploy/local/fixtures/sse-proxy.py" "$work/sse-proxy.log" \
    SSE_UPSTREAM="$order_addr" SSE_TOKEN_FILE="$token_file" SSE_PORT_FILE="$port_file")
  started+=("python3:$pid")
  deadline=$((SECONDS + 20))
  until [[ -s $port_file ]]; do
    # kill -0, not om_pid_alive: right after the spawn the pid may still
    # be env or nohup on its way to exec python3.
    if ((SECONDS >= deadline)) || ! kill -0 "$pid" 2>/dev/null; then
      echo "    the page's proxy did not start (see sse-proxy.log)"
      return 1
    fi
    sleep 0.1
  done
  port=$(<"$port_file")
  # The page in the background; --dump-dom prints it once the watch ends
  # (virtual time stands still while the event stream is open), or
  # chromium_run's timeout ends it.
  chromium_run --dump-dom "http://127.0.0.1:$port/?order=$sse_order" >"$dom" &
  browser=$!
  # The proxy logs the watch once the gateway answered its head, i.e. after
  # the first event (PENDING): the page is subscribed.
  deadline=$((SECONDS + 30))
  until grep -q "^proxy GET /v1/orders/$sse_order:watch " "$work/sse-proxy.log"; do
    if ((SECONDS >= deadline)) || ! kill -0 "$browser" 2>/dev/null; then
      echo "    the page did not open the watch within 30 s (see sse-proxy.log, chromium.log)"
      wait "$browser" || true
      return 1
    fi
    sleep 0.2
  done
  # Now the relay carries order.created to processor-svc and the payment
  # back: the page must see the order change while it watches.
  if ! om_mesh_start relay om_http_health "$relay_addr"; then
    wait "$browser" || true
    return 1
  fi
  wait "$browser" || true
  seen=$(grep -o '<li>[A-Z_]*</li>' "$dom" | sed 's/<[^>]*>//g' | paste -sd' ' || true)
  if [[ $seen != "ORDER_STATUS_PENDING ORDER_STATUS_PAID" ]] ||
    ! grep -q '<output id="stream">done</output>' "$dom"; then
    echo "    the page did not see PENDING, then PAID; it showed:"
    grep -o '<output id="[a-z]*">[^<]*</output>' "$dom" | sed 's/^/      /'
    printf '      events: %s\n' "${seen:-none}"
    return 1
  fi
  # The browser asked for events and the gateway answered them.
  if ! grep -q "^proxy GET /v1/orders/$sse_order:watch accept='text/event-stream' status=200 content-type='text/event-stream'" \
    "$work/sse-proxy.log"; then
    echo "    the watch was not answered as text/event-stream (see sse-proxy.log)"
    return 1
  fi
  printf '    the page saw %s over EventSource: %s\n' "$sse_order" "$seen"
}
if ! sse_check; then
  failed+=("the EventSource page did not see the order PAID")
fi

if ((${#failed[@]} > 0)); then
  printf '\nrest-checks FAIL:\n'
  printf '  %s\n' "${failed[@]}"
  exit 1
fi
printf '\nrest-checks PASS: schemathesis found nothing; /docs lists every operation of both services; EventSource saw an order PAID\n'
