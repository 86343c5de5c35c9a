#!/usr/bin/env bash
# Tests contract-check.sh itself: copies buf.yaml and the .proto module into
# a scratch git repository, commits, and shows that the check
#   - skips (and passes) on the first commit and in a shallow clone,
#   - passes a compatible change (a new field, a new message),
#   - fails a deleted field, a renumbered field and a renamed message,
#     committed or not,
#   - on a branch, compares with the merge base with main, so a breaking
#     commit followed by a harmless one still fails, in a linked worktree
#     too.
# Needs buf (deploy/local/tools.sh buf) and git; no services.
# SELFTEST_VERBOSE=1 shows the check's output for every case.
set -euo pipefail
# shellcheck source=deploy/local/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

check_script=$OM_ROOT/deploy/local/contract-check.sh
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
repo=$tmp/repo
events=proto/ordermesh/events/v1/events.proto
fails=0

mkdir -p "$repo/proto"
cp "$OM_ROOT/buf.yaml" "$repo/"
cp -R "$OM_ROOT/proto/ordermesh" "$OM_ROOT/proto/google" "$repo/proto/"

g() { git -C "$repo" "$@"; }
g init -q -b main
g config user.name contract-selftest
g config user.email contract-selftest@localhost
g config commit.gpgsign false
commit() {
  g add -A
  g commit -q -m "$1"
}

# expect PASS|FAIL|SKIP WHAT [--repo DIR] [--against REF]: runs the check
# and compares its verdict; shows the check's output when it differs.
expect() {
  local want=$1 what=$2 out rc=0 got
  shift 2
  out=$(bash "$check_script" --repo "$repo" "$@" 2>&1) || rc=$?
  if ((rc != 0)); then
    got=FAIL
  elif grep -q '^skipped:' <<<"$out"; then
    got=SKIP
  else
    got=PASS
  fi
  if [[ $got == "$want" ]]; then
    printf 'ok   %-5s %s\n' "$want" "$what"
  else
    printf 'FAIL %s: expected %s, got %s; output:\n%s\n' "$what" "$want" "$got" "$out"
    fails=$((fails + 1))
  fi
  LAST_OUTPUT=$out
  if [[ -n ${SELFTEST_VERBOSE:-} ]]; then
    sed 's/^/     | /' <<<"$out"
  fi
}

# edit 'sed script': edits the events contract in place.
edit() { sed -i -E "$1" "$repo/$events"; }
grep -q 'int64 total_minor = 5;' "$repo/$events" ||
  om_die "$events changed: this self-test edits OrderCreated.total_minor = 5"

commit "contracts as on main"
expect SKIP "first commit: nothing to compare with"
base=$(g rev-parse HEAD)

edit 's/^(  int64 total_minor = 5;)$/\1\n  string note = 6;/'
printf '\nmessage SelfTestAdded {\n  string id = 1;\n}\n' >>"$repo/$events"
commit "new field, new message"
expect PASS "a new field and a new message are compatible"
good=$(g rev-parse HEAD)

edit '/^  int64 total_minor = 5;$/d'
expect FAIL "an uncommitted deleted field"
commit "delete OrderCreated.total_minor"
expect FAIL "a committed deleted field"
grep -q 'total_minor' <<<"$LAST_OUTPUT" || {
  printf 'FAIL the report does not name the deleted field:\n%s\n' "$LAST_OUTPUT"
  fails=$((fails + 1))
}
expect PASS "--against the breaking commit itself" --against HEAD

g reset -q --hard "$good"
edit 's/^  string customer_id = 2;$/  string customer_id = 7;/'
commit "renumber a field"
expect FAIL "a renumbered field"

g reset -q --hard "$good"
edit 's/^message PaymentFailed \{$/message PaymentDeclined {/'
commit "rename a message"
expect FAIL "a renamed message"

git clone -q --depth 1 "file://$repo" "$tmp/shallow"
expect SKIP "a shallow clone without the previous commit" --repo "$tmp/shallow"

g reset -q --hard "$good"
g switch -q -c feature
edit '/^  int64 amount_minor = 3;$/d'
commit "breaking, on a branch"
printf '// harmless\n' >>"$repo/$events"
commit "harmless, on top"
expect PASS "HEAD~1 alone misses the branch's breaking commit" --against HEAD~1
expect FAIL "on a branch: against the merge base with main"

g switch -q main
g worktree add -q -b in-worktree "$tmp/worktree" main
sed -i -E 's/^  string reason = 3;$/  string reason = 9;/' "$tmp/worktree/$events"
git -C "$tmp/worktree" commit -q -am "renumber, in a linked worktree"
expect FAIL "in a linked worktree (.git is a file)" --repo "$tmp/worktree"

if ((fails > 0)); then
  printf '%d contract-check self-test(s) failed\n' "$fails"
  exit 1
fi
printf 'contract-check self-test: all passed\n'
