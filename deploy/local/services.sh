#!/usr/bin/env bash
# Makes sure the PostgreSQL and RabbitMQ servers named by the given URLs are
# reachable. A local one (127.0.0.1, localhost) that is down is started, and
# installed first when missing, on Debian/Ubuntu as root; anywhere else the
# script says what to do and exits 1.
#
# Usage: deploy/local/services.sh NAME=URL...
#   NAME is the variable the URL came from (for messages); postgres:// and
#   postgresql:// URLs are PostgreSQL, amqp:// and amqps:// are RabbitMQ.
#   e.g. services.sh ORDER_DATABASE_URL=postgres://postgres@127.0.0.1:5432/x AMQP_URL=amqp://...
set -euo pipefail
# shellcheck source=deploy/local/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

can_install() {
  [[ $(id -u) == 0 && -r /etc/debian_version ]] && command -v apt-get >/dev/null
}

apt_updated=0
apt_install() {
  export DEBIAN_FRONTEND=noninteractive
  if ((apt_updated == 0)); then
    apt-get update -q </dev/null || om_die "apt-get update failed"
    apt_updated=1
  fi
  apt-get install -y -q --no-install-recommends "$@" </dev/null || om_die "apt-get install $* failed"
}

# ---- PostgreSQL -------------------------------------------------------------

pg_ready() { command -v pg_isready >/dev/null && pg_isready -q -t 3 -d "$1"; }

pg_help() {
  local var=$1 url=$2 host=$3 port=$4
  cat >&2 <<EOF
error: PostgreSQL is not reachable at $host:$port ($var=$(om_redact "$url")).
Do one of these, then try again:
  - start it (Debian/Ubuntu):   pg_lsclusters; sudo pg_ctlcluster <version> main start
  - install it (Debian/Ubuntu): sudo apt-get install -y postgresql
      (as root on Debian/Ubuntu the scripts do this themselves for a local server)
  - install it (macOS):         brew install postgresql@15 && brew services start postgresql@15
  - or set $var to a server you can reach, as a user allowed to create databases.
EOF
  exit 1
}

# Starts (installing first, if needed) the local cluster of port `port`.
start_local_postgres() {
  local port=$1 fresh=0 line ver name status hba
  if ! command -v pg_lsclusters >/dev/null; then
    om_say "installing PostgreSQL (apt-get install postgresql)"
    apt_install postgresql
    fresh=1
  fi
  line=$(pg_lsclusters -h | awk -v p="$port" '$3 == p { print; exit }')
  if [[ -z $line ]]; then
    if [[ -n $(pg_lsclusters -h) ]]; then
      pg_lsclusters >&2
      om_die "no PostgreSQL cluster is set to port $port (clusters above): start one there, or point the URL at one that runs"
    fi
    ver=$(find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -V | tail -n 1)
    [[ -n $ver ]] || om_die "no PostgreSQL server version under /usr/lib/postgresql"
    om_say "creating PostgreSQL cluster $ver/main on port $port"
    pg_createcluster --port "$port" "$ver" main
    fresh=1
    line=$(pg_lsclusters -h | awk -v p="$port" '$3 == p { print; exit }')
  fi
  read -r ver name _ status _ <<<"$line"
  if ((fresh)); then
    # A new Debian cluster asks for a password over TCP; local URLs carry none.
    hba=/etc/postgresql/$ver/$name/pg_hba.conf
    om_say "allowing password-less local TCP connections in $hba (local development)"
    sed -i '1i # ordermesh deploy/local/services.sh: trust local TCP (development only)\nhost all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
  fi
  if [[ $status == online ]]; then
    pg_ctlcluster --skip-systemctl-redirect "$ver" "$name" reload
  else
    om_say "starting PostgreSQL cluster $ver/$name"
    pg_ctlcluster --skip-systemctl-redirect "$ver" "$name" start ||
      om_die "pg_ctlcluster $ver $name start failed (see /var/log/postgresql/postgresql-$ver-$name.log)"
  fi
}

ensure_postgres() {
  local var=$1 url=$2 host port server deadline err
  read -r host port < <(om_url_host_port "$url" 5432)
  server=$(om_url_with_db "$url" postgres)
  if ! pg_ready "$server"; then
    if om_is_local_host "$host" && can_install; then
      start_local_postgres "$port"
      deadline=$((SECONDS + 30))
      until pg_ready "$server"; do
        ((SECONDS < deadline)) || om_die "PostgreSQL on port $port did not accept connections within 30 s"
        sleep 0.5
      done
    else
      pg_help "$var" "$url" "$host" "$port"
    fi
  fi
  err=$(psql "$server" -wXAtq -c 'select 1' 2>&1 >/dev/null) ||
    om_die "PostgreSQL at $host:$port answers but refuses $var=$(om_redact "$url"): $err
Fix the user or password in $var (the user must be allowed to create databases)."
}

# ---- RabbitMQ ---------------------------------------------------------------

rabbit_help() {
  local var=$1 url=$2 host=$3 port=$4
  cat >&2 <<EOF
error: RabbitMQ is not reachable at $host:$port ($var=$(om_redact "$url")).
Do one of these, then try again:
  - start it:                   sudo rabbitmq-server -detached
  - install it (Debian/Ubuntu): sudo apt-get install -y rabbitmq-server
      (as root on Debian/Ubuntu the scripts do this themselves for a local broker)
  - install it (macOS):         brew install rabbitmq && brew services start rabbitmq
  - or set $var to a broker you can reach.
EOF
  exit 1
}

ensure_rabbitmq() {
  local var=$1 url=$2 host port deadline
  read -r host port < <(om_url_host_port "$url" 5672)
  om_tcp_open "$host" "$port" && return 0
  if ! om_is_local_host "$host" || ! can_install; then
    rabbit_help "$var" "$url" "$host" "$port"
  fi
  if ! command -v rabbitmq-server >/dev/null; then
    om_say "installing RabbitMQ (apt-get install rabbitmq-server)"
    apt_install rabbitmq-server
  fi
  if ! om_tcp_open "$host" "$port"; then
    if timeout 20 rabbitmq-diagnostics -q ping >/dev/null 2>&1 </dev/null; then
      om_die "RabbitMQ runs but does not listen on $host:$port: check its listeners (rabbitmq-diagnostics listeners) or $var"
    fi
    om_say "starting RabbitMQ (rabbitmq-server -detached)"
    rabbitmq-server -detached </dev/null || om_die "rabbitmq-server -detached failed (see /var/log/rabbitmq/)"
  fi
  deadline=$((SECONDS + 90))
  until om_tcp_open "$host" "$port"; do
    ((SECONDS < deadline)) || om_die "RabbitMQ did not listen on $host:$port within 90 s (see /var/log/rabbitmq/)"
    sleep 1
  done
}

# ---- main -------------------------------------------------------------------

(($# > 0)) || om_die "usage: $0 NAME=URL..."
declare -A seen=()
for arg in "$@"; do
  [[ $arg == *=* ]] || om_die "expected NAME=URL, got '$arg'"
  var=${arg%%=*} url=${arg#*=}
  case $url in
    postgres://* | postgresql://*) kind=pg key=$(om_url_with_db "$url" postgres) ;;
    amqp://* | amqps://*) kind=amqp key=$(om_url_host_port "$url" 5672) ;;
    *) om_die "$var=$(om_redact "$url"): not a postgres:// or amqp:// URL" ;;
  esac
  [[ -z ${seen[$key]:-} ]] || continue
  seen[$key]=1
  if [[ $kind == pg ]]; then
    ensure_postgres "$var" "$url"
  else
    ensure_rabbitmq "$var" "$url"
  fi
done
