#!/usr/bin/env bash
# make test: every test, in one debug build.
#   tools -> PostgreSQL/RabbitMQ check -> buf lint -> buf breaking and its
#   self-test -> fmt --check, clippy -> cargo nextest (or cargo test) ->
#   AsyncAPI check -> deploy/check.sh (chart, Dockerfile, compose) ->
#   smoke-harness self-test -> README, docs/REST.md, docs/AUTH.md smoke ->
#   Connect/gRPC-Web (protocols.sh) -> REST checks (schemathesis,
#   Chromium) -> sweep
# Each step runs even when an earlier one failed; the exit code is non-zero
# when any did, and a summary closes the output.
set -euo pipefail
# shellcheck source=deploy/local/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$OM_ROOT"

bash deploy/local/tools.sh
bash deploy/local/services.sh \
  TEST_PG_URL="${TEST_PG_URL:-postgres://postgres@127.0.0.1:5432/postgres}" \
  TEST_AMQP_URL="${TEST_AMQP_URL:-$OM_DEFAULT_AMQP_URL}"

results=()
status=0
step() {
  local name=$1
  shift
  printf '\n==> %s\n' "$name"
  if "$@"; then
    results+=("ok    $name")
  else
    results+=("FAIL  $name")
    status=1
  fi
}

step "buf lint" "$OM_TOOLS_BIN/buf" lint
step "buf breaking (deploy/local/contract-check.sh)" bash deploy/local/contract-check.sh
step "buf breaking check self-test" bash deploy/local/contract-check-selftest.sh
step "cargo fmt --check" cargo fmt --all -- --check
step "cargo clippy -D warnings" cargo clippy --workspace --all-targets -- -D warnings
if cargo nextest --version >/dev/null 2>&1; then
  step "cargo nextest run --workspace" cargo nextest run --workspace --no-fail-fast
else
  step "cargo test --workspace" cargo test --workspace --no-fail-fast
fi
step "AsyncAPI document: @asyncapi/parser (deploy/local/asyncapi-check.mjs)" bash -o pipefail -c \
  'bash deploy/local/tools.sh asyncapi && cargo run -q -p relay --example asyncapi | node deploy/local/asyncapi-check.mjs -'
if [[ -f deploy/check.sh ]]; then
  step "deploy static checks (deploy/check.sh)" bash deploy/check.sh
fi
step "smoke harness self-test" bash deploy/local/readme-smoke-selftest.sh
step "README smoke (deploy/local/readme-smoke.sh)" bash deploy/local/readme-smoke.sh
step "docs/REST.md smoke" env SMOKE_README=docs/REST.md bash deploy/local/readme-smoke.sh
step "docs/AUTH.md smoke" env SMOKE_README=docs/AUTH.md bash deploy/local/readme-smoke.sh
step "Connect, gRPC-Web, gRPC and CORS with buf curl (deploy/local/protocols.sh)" bash deploy/local/protocols.sh
step "REST checks: schemathesis, /docs in Chromium (deploy/local/rest-checks.sh)" bash deploy/local/rest-checks.sh
step "sweep" bash deploy/local/sweep.sh

printf '\nmake test:\n'
printf '  %s\n' "${results[@]}"
exit "$status"
