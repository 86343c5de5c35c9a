#!/usr/bin/env bash
# Runs the README's walk-through against freshly started binaries, the way a
# user would, so the README cannot rot.
#
# The steps are the lines of the fenced code blocks that follow a line
# `<!-- smoke -->` (scripts/readme_steps.py tells the syntax: `# expect: TEXT`,
# `# expect-within-1s: TEXT`, `# expect-error: TEXT` at the end of a line).
# The binaries run on free ports with their own databases
# (ordermesh_smoke_<id>_orders / _processor), exchange and queues
# (om-test-smoke-<id>.*); the README's 127.0.0.1:50051 / :50052 / :9100 are
# replaced by those ports. Everything is removed at the end, pass or fail.
#
# Knobs:
#   SMOKE_README=README.md     the file to run
#   SMOKE_DRY_RUN=1            start nothing, clean nothing: only run the steps
#                              (to test the steps and markers themselves)
#   SMOKE_START_TIMEOUT=90     seconds for the binaries to become healthy
#   SMOKE_STEP_TIMEOUT=30      seconds one command may take
#   SMOKE_PG_URL               PostgreSQL server for the smoke databases
#                              (default TEST_PG_URL, else the local server)
#   AMQP_URL                   the broker (default: local)
#   ORDERMESH_BIN_DIR=dir      use the binaries in dir instead of building
set -euo pipefail
# shellcheck source=deploy/local/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$OM_ROOT"

readme=${SMOKE_README:-README.md}
dry_run=${SMOKE_DRY_RUN:-0}
start_timeout=${SMOKE_START_TIMEOUT:-90}
step_timeout=${SMOKE_STEP_TIMEOUT:-30}
[[ -f $readme ]] || om_die "$readme not found (SMOKE_README): nothing to smoke-test"
readme_name=${readme#"$OM_ROOT"/}

# Refuse a malformed walk-through before building anything.
python3 scripts/readme_steps.py "$readme" --human >/dev/null

# Tokens: the binaries verify with the mesh's auth_secret; the README's
# .run/admin.token (what `make up` writes) becomes $work/admin.token.
om_mesh_prepare smoke "${SMOKE_PG_URL:-${TEST_PG_URL:-postgres://postgres@127.0.0.1:5432/postgres}}"

cleanup() {
  local rc=$? name
  set +e
  trap '' INT TERM # finish cleaning up whatever arrives
  [[ $dry_run == 1 ]] || om_mesh_teardown
  if ((rc != 0)) && compgen -G "$work/*.log" >/dev/null; then
    printf 'readme-smoke: logs of the binaries kept in %s\n' "${work#"$OM_ROOT"/}" >&2
  else
    rm -rf "$work"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [[ $dry_run == 1 ]]; then
  om_say "dry run: nothing started; steps run as written (ports $order_port/$processor_port/$relay_port substituted)"
else
  bash deploy/local/tools.sh grpcurl
  command -v curl >/dev/null || om_die "curl is needed for the relay health check"
  om_mesh_binaries
  om_say "smoke environment: databases $order_db, $processor_db; exchange $prefix.events"
  om_mint_token "$bin_dir" "$auth_secret" admin admin 3600 >"$work/admin.token" ||
    om_die "could not mint the admin token (processor-svc token)"
  om_mesh_start order-svc om_grpc_health "$order_addr"
  om_mesh_start processor-svc om_grpc_health "$processor_addr"
  om_mesh_start relay om_http_health "$relay_addr"
fi

python3 scripts/readme_steps.py "$readme" \
  --sub "127.0.0.1:50051=$order_addr" \
  --sub "127.0.0.1:50052=$processor_addr" \
  --sub "127.0.0.1:9100=$relay_addr" \
  --sub ".run/admin.token=$work/admin.token" >"$work/steps"

export PATH="$OM_TOOLS_BIN:$PATH"
env_file=$work/step-env
out=$work/step-out
: >"$env_file"

# Runs one command in a fresh `bash -euo pipefail`, in the repo root, with the
# variables earlier steps exported; output (stdout+stderr) goes to $out.
run_once() {
  rm -f "$env_file.next"
  # shellcheck disable=SC2016 # expanded by the inner bash
  timeout "$step_timeout" bash -c '
    set -euo pipefail
    source "$1" || true
    eval "$2"
    export -p >"$1.next"' smoke-step "$env_file" "$1" >"$out" 2>&1 </dev/null
}

now_ms() { printf '%s\n' "$((${EPOCHREALTIME/[.,]/} / 1000))"; }

passed=0
failed=0
failures=()
while IFS=$'\x1f' read -r -d '' lineno kind within_ms expected command; do
  printf '\n$ %s\n' "$command"
  rc=0
  attempts=1
  run_once "$command" || rc=$?
  if [[ $kind == within ]]; then
    deadline=$(($(now_ms) + within_ms))
    while ! { ((rc == 0)) && [[ $(<"$out") == *"$expected"* ]]; } && (($(now_ms) < deadline)); do
      sleep 0.05
      rc=0
      run_once "$command" || rc=$?
      attempts=$((attempts + 1))
    done
  fi
  output=$(<"$out")
  [[ -z $output ]] || printf '%s\n' "$output"
  contains=0
  [[ $output == *"$expected"* ]] && contains=1
  why=""
  case $kind in
    run) ((rc == 0)) || why="exited $rc" ;;
    expect)
      if ((rc != 0)); then why="exited $rc (expected: $expected)"
      elif ((!contains)); then why="output lacks: $expected"; fi
      ;;
    within)
      if ((rc != 0)); then why="still exits $rc after ${within_ms} ms, $attempts attempts (expected: $expected)"
      elif ((!contains)); then why="output still lacks after ${within_ms} ms, $attempts attempts: $expected"; fi
      ;;
    error)
      if ((rc == 0)); then why="exited 0, expected an error containing: $expected"
      elif ((!contains)); then why="error output lacks: $expected"; fi
      ;;
    *) why="unknown step kind $kind" ;;
  esac
  if [[ -z $why ]]; then
    passed=$((passed + 1))
    [[ -f $env_file.next ]] && mv -f "$env_file.next" "$env_file"
    case $kind in
      run) printf '[ok] %s:%s\n' "$readme_name" "$lineno" ;;
      within) printf '[ok] %s:%s %s (after %d attempt(s))\n' "$readme_name" "$lineno" "$expected" "$attempts" ;;
      *) printf '[ok] %s:%s %s\n' "$readme_name" "$lineno" "$expected" ;;
    esac
  else
    failed=$((failed + 1))
    failures+=("$readme_name:$lineno: $why")
    printf '[FAIL] %s:%s: %s\n' "$readme_name" "$lineno" "$why"
  fi
done <"$work/steps"

if ((failed > 0)) && [[ $dry_run != 1 ]]; then
  for name in "${OM_BINARIES[@]}"; do
    [[ -s $work/$name.log ]] || continue
    printf '\n---- last lines of %s/%s.log\n' "${work#"$OM_ROOT"/}" "$name"
    tail -n 30 "$work/$name.log"
  done
fi
printf '\n'
if ((failed > 0)); then
  printf 'readme-smoke FAIL:\n'
  printf '  %s\n' "${failures[@]}"
else
  printf 'readme-smoke PASS: every step of %s\n' "$readme_name"
fi
printf 'readme-smoke: %d passed, %d failed\n' "$passed" "$failed"
((failed == 0))
