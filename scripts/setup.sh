#!/usr/bin/env bash
# Make this machine able to run hotupdate's demo and tests: system packages (RabbitMQ with
# Erlang, PostgreSQL, rsync, OpenSSH, Chromium), the services running, and the Python venv.
# Idempotent: it installs only what is missing and starts only what is down.
set -euo pipefail
cd "$(dirname "$0")/.."

need_pkgs=()
command -v rabbitmq-server >/dev/null || need_pkgs+=(rabbitmq-server)
command -v erlc >/dev/null && command -v erl_call >/dev/null || need_pkgs+=(erlang-base)
command -v rsync >/dev/null || need_pkgs+=(rsync)
# The ssh runner's tests start their own sshd on loopback (a temp config, key-only); the package
# is the binary they need, not a service this script starts.
[ -x /usr/sbin/sshd ] && command -v ssh-keygen >/dev/null || need_pkgs+=(openssh-server)
command -v pg_ctlcluster >/dev/null || need_pkgs+=(postgresql)
[ -x /usr/bin/chromium ] || need_pkgs+=(chromium)
# The dashboard's sign-in tests run a real OpenID provider (tests/oidc_provider), its browser tests
# axe-core (tests/axe): npm ci on first use.
command -v node >/dev/null && command -v npm >/dev/null || need_pkgs+=(nodejs npm)
# The dashboard shows Chinese (the seed's area names, results); without a CJK font the
# browser draws boxes in screenshots.
dpkg -s fonts-wqy-zenhei >/dev/null 2>&1 || need_pkgs+=(fonts-wqy-zenhei)
# promtool checks ops/prometheus/alerts.yml (tests/unit/test_alert_rules.py); the package's server is not started.
command -v promtool >/dev/null || need_pkgs+=(prometheus)
command -v python3 >/dev/null || need_pkgs+=(python3 python3-venv)
python3 -c 'import venv, ensurepip' 2>/dev/null || need_pkgs+=(python3-venv)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  echo "setup: installing ${need_pkgs[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

wait_for_port() {  # host port what seconds
  for _ in $(seq 1 "$4"); do
    if (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; then return 0; fi
    sleep 1
  done
  echo "setup: $3 did not answer on $1:$2" >&2; return 1
}

if ! (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; then
  echo "setup: starting RabbitMQ"
  rabbitmq-server -detached || true
  wait_for_port 127.0.0.1 5672 RabbitMQ 90
fi
rabbitmqctl await_startup >/dev/null 2>&1 || true

if ! (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; then
  echo "setup: starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -n1)" main start || true
  wait_for_port 127.0.0.1 5432 PostgreSQL 60
fi
# Tests need a database 'test' that user postgres reaches over TCP. Where the server asks
# for a password (Debian's default), give postgres one and tell the tests through .ci/test.env.
if ! psql -h 127.0.0.1 -U postgres -d test -c 'select 1' >/dev/null 2>&1; then
  if PGPASSWORD=hotupdate psql -h 127.0.0.1 -U postgres -d postgres -c 'select 1' >/dev/null 2>&1 \
     || su postgres -c "psql -q -c \"ALTER USER postgres PASSWORD 'hotupdate'\"" >/dev/null 2>&1; then
    PGPASSWORD=hotupdate psql -h 127.0.0.1 -U postgres -d postgres -tc "select 1 from pg_database where datname='test'" \
      | grep -q 1 || PGPASSWORD=hotupdate psql -h 127.0.0.1 -U postgres -d postgres -qc 'create database test'
    echo "HOTUPDATE_TEST_POSTGRES_URL=postgresql://postgres:hotupdate@127.0.0.1:5432/test" > .ci/test.env
  fi
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
if ! .venv/bin/python -c 'import bus, pytest, playwright' 2>/dev/null \
   || [ pyproject.toml -nt .venv/.installed ]; then
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[test]'
  touch .venv/.installed
fi
