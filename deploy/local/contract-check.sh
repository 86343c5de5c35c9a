#!/usr/bin/env bash
# Contract safety: `buf breaking` of the working tree's .proto module
# (buf.yaml at the root, rules under `breaking:`) against an earlier commit,
# read through buf's git input (`.git#ref=<commit>`).
#
# Which commit:
#   --against REF (or CONTRACT_AGAINST=REF)  that one
#   on a branch other than main               its merge base with main
#                                             (local `main`, else `origin/main`)
#   on main (or with no main at all)          HEAD~1: the previous commit
# With no such commit (the first commit, or a shallow clone that lacks it)
# the check is skipped with a message and passes: there is nothing to break.
#
# Usage: deploy/local/contract-check.sh [--repo DIR] [--against REF]
#        (DIR: the git checkout to check, default this one; the self-test,
#        contract-check-selftest.sh, points it at a scratch repository)
set -euo pipefail
# shellcheck source=deploy/local/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

repo=$OM_ROOT
against=${CONTRACT_AGAINST:-}
while (($# > 0)); do
  case $1 in
    --repo) repo=${2:?--repo needs a directory} && shift 2 ;;
    --against) against=${2:?--against needs a git ref} && shift 2 ;;
    *) om_die "unknown argument '$1' (usage: $0 [--repo DIR] [--against REF])" ;;
  esac
done

buf=$OM_TOOLS_BIN/buf
[[ -x $buf ]] || om_die "buf is missing: run deploy/local/tools.sh buf"
cd "$repo"
git rev-parse --git-dir >/dev/null 2>&1 || om_die "$repo is not a git checkout"

commit_of() { git rev-parse --verify -q "$1^{commit}" 2>/dev/null; }

skip() {
  printf 'skipped: %s; nothing to compare the contracts with\n' "$1"
  exit 0
}

shallow=$(git rev-parse --is-shallow-repository 2>/dev/null || echo false)
if [[ -n $against ]]; then
  base=$(commit_of "$against") || om_die "no commit '$against' in $repo"
  why="$against"
else
  head=$(commit_of HEAD) || skip "no commit yet"
  main=$(commit_of refs/heads/main || commit_of refs/remotes/origin/main || true)
  if [[ -n $main && $main != "$head" ]]; then
    base=$(git merge-base "$head" "$main" 2>/dev/null) ||
      skip "no merge base with main (shallow clone? fetch more history: git fetch --deepen=50)"
    why="merge base with main"
  else
    if ! base=$(commit_of HEAD~1); then
      [[ $shallow == true ]] &&
        skip "shallow clone without the previous commit (fetch it: git fetch --deepen=1)"
      skip "HEAD is the first commit"
    fi
    why="HEAD~1"
  fi
fi

printf 'buf breaking: working tree of %s against %s (%s)\n' "$repo" "${base:0:12}" "$why"
# buf clones the commit out of the local repository: the common git
# directory, so a linked worktree (whose .git is a file) works too; `ref`
# takes a full hash.
git_dir=$(git rev-parse --path-format=absolute --git-common-dir)
if "$buf" breaking --against "$git_dir#format=git,ref=$base"; then
  printf 'no breaking changes\n'
else
  printf 'buf breaking: the change above would break clients of the contracts (rules: buf.yaml `breaking`)\n' >&2
  exit 1
fi
