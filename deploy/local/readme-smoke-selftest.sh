#!/usr/bin/env bash
# Tests readme-smoke.sh itself (extraction, markers, retries, exported
# variables, address substitution) with plain shell commands in dry-run mode:
# no binaries, databases or broker involved. `make smoke-selftest`.
set -euo pipefail
# shellcheck source=deploy/local/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$OM_ROOT"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fails=0
lacks() { ! grep -q -- "$1" <<<"$2"; }
check() {
  local what=$1
  shift
  if "$@"; then
    printf 'ok   %s\n' "$what"
  else
    printf 'FAIL %s\n' "$what"
    fails=$((fails + 1))
  fi
}

# ---- a walk-through where every step must pass -----------------------------
cat >"$tmp/good.md" <<'EOF'
# Title

The syntax shown in a block of its own is not run:

```markdown
<!-- smoke -->
echo never-run  # expect: nothing
```

<!-- smoke -->

```bash
# a comment line
echo hello  # expect: hello
$ echo prompt dropped  # expect: prompt dropped
export GREETING="hi there"
echo "$GREETING"  # expect: hi there
printf '%s\n' one \
  two  # expect: two
ls /definitely/not/here  # expect-error: No such file
(sleep 0.3; touch "$SMOKE_FLAG") >/dev/null 2>&1 &
test -f "$SMOKE_FLAG" && echo READY  # expect-within-2s: READY
echo '{"status": "ORDER_STATUS_PAID"}'  # expect: "status": "ORDER_STATUS_PAID"
echo 127.0.0.1:50051 | grep -v ':50051$'  # expect: 127.0.0.1:
true
```

Prose between blocks.

<!-- smoke -->
~~~sh
echo second block  # expect-within-100ms: second
~~~
EOF

out=$(SMOKE_FLAG=$tmp/flag SMOKE_DRY_RUN=1 SMOKE_README=$tmp/good.md bash deploy/local/readme-smoke.sh 2>&1) && rc=0 || rc=$?
check "good walk-through passes" test "$rc" = 0
check "good walk-through counts 12 steps" grep -qx 'readme-smoke: 12 passed, 0 failed' <<<"$out"
check "blocks without a marker are not run" lacks never-run "$out"
check "addresses are substituted" lacks '^127\.0\.0\.1:50051$' "$out"
[[ $rc == 0 ]] || printf '%s\n' "$out"

# ---- a walk-through where each step fails in its own way -------------------
cat >"$tmp/bad.md" <<'EOF'
<!-- smoke -->
```
echo hello  # expect: goodbye
false
echo fine  # expect-error: fine
ls /definitely/not/here  # expect-error: permission
echo nope  # expect-within-200ms: yes
exit 3  # expect: anything
echo still runs after failures  # expect: still runs
```
EOF
start=$SECONDS
out=$(SMOKE_DRY_RUN=1 SMOKE_README=$tmp/bad.md bash deploy/local/readme-smoke.sh 2>&1) && rc=0 || rc=$?
check "failing walk-through exits non-zero" test "$rc" != 0
check "failing walk-through counts 1 passed, 6 failed" grep -qx 'readme-smoke: 1 passed, 6 failed' <<<"$out"
for line in 3 4 5 6 7 8; do
  check "line $line is reported as failed" grep -q "^\[FAIL\] .*bad.md:$line:" <<<"$out"
done
check "expect-within gives up after its deadline" test $((SECONDS - start)) -lt 10
[[ $rc != 0 ]] || printf '%s\n' "$out"

# ---- malformed READMEs are refused before anything runs --------------------
printf '<!-- smoke -->\nnot a code block\n' >"$tmp/nofence.md"
printf '# nothing to run here\n' >"$tmp/nosteps.md"
# shellcheck disable=SC2016 # backticks are Markdown here
printf '<!-- smoke -->\n```\necho x  # expect-within: y\n```\n' >"$tmp/badmarker.md"
printf '<!-- smoke -->\n```\necho x\n' >"$tmp/unclosed.md"
for f in nofence nosteps badmarker unclosed; do
  out=$(SMOKE_DRY_RUN=1 SMOKE_README=$tmp/$f.md bash deploy/local/readme-smoke.sh 2>&1) && rc=0 || rc=$?
  check "$f.md is refused" test "$rc" != 0
  check "$f.md runs no step" lacks '^\$ ' "$out"
done

printf '\n'
if ((fails > 0)); then
  printf 'smoke-selftest FAIL: %d check(s) failed\n' "$fails"
  exit 1
fi
printf 'smoke-selftest PASS\n'
