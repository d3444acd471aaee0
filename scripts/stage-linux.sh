#!/bin/sh
# Stages Colibri for a Linux host (systemd) into an image root:
#   scripts/stage-linux.sh ROOT [BINDIR]
# installs the binaries (from BINDIR, default target/release of this checkout),
# the systemd units, the hub's nats-server config and the sample configs under
# ROOT, then prints the user, group and systemctl steps. Users and groups are
# created only when ROOT is / and we are root with useradd(8); otherwise the
# commands are printed.
set -eu
umask 022

usage() { echo "usage: $0 ROOT [BINDIR]" >&2; exit 2; }
die() { echo "stage-linux: $*" >&2; exit 1; }

case $# in 1 | 2) ;; *) usage ;; esac
root=$1
[ -n "$root" ] || usage
repo=$(CDPATH='' cd -- "$(dirname -- "$0")/.." && pwd)
bindir=${2:-$repo/target/release}
pkg=$repo/packaging/systemd
binaries="colibri-scheduler colibri-worker colibri"
units="colibri-scheduler.service colibri-worker.service nats-server.service"

for b in $binaries; do
    [ -f "$bindir/$b" ] || die "$bindir/$b not found: build with cargo build --release, or give BINDIR"
done
mkdir -p "$root" || die "cannot create $root"
root=$(CDPATH='' cd -- "$root" && pwd)
prefix=${root%/}

install -d -m 0755 "$prefix/usr/local/bin" "$prefix/etc/systemd/system" "$prefix/etc/colibri"
for b in $binaries; do
    install -m 0755 "$bindir/$b" "$prefix/usr/local/bin/$b"
done
for u in $units; do
    install -m 0644 "$pkg/$u" "$prefix/etc/systemd/system/$u"
done
install -m 0644 "$pkg/nats-server.conf" "$prefix/etc/colibri/nats-server.conf"
install -m 0644 "$pkg/scheduler.toml" "$prefix/etc/colibri/scheduler.toml.sample"
install -m 0644 "$pkg/worker.toml" "$prefix/etc/colibri/worker.toml.sample"
echo "staged Colibri for Linux into $root"

# System users: colibri (scheduler), colibri-agent (worker and its agents),
# nats (nats-server). Their directories come from the units' StateDirectory=.
add_user() { # add_user NAME HOME COMMENT
    getent group "$1" >/dev/null 2>&1 || groupadd --system "$1"
    getent passwd "$1" >/dev/null 2>&1 ||
        useradd --system --gid "$1" --home-dir "$2" --no-create-home \
            --shell /usr/sbin/nologin --comment "$3" "$1"
}
if [ "$root" = / ] && [ "$(id -u)" -eq 0 ] && command -v useradd >/dev/null 2>&1 &&
    command -v groupadd >/dev/null 2>&1; then
    add_user colibri /var/lib/colibri "Colibri scheduler"
    add_user colibri-agent /var/lib/colibri-worker "Colibri worker and agents"
    add_user nats /var/lib/nats "NATS server"
    echo "created users and groups colibri, colibri-agent and nats"
else
    cat <<'USERS'

Create the users and groups (as root on the host):
  groupadd --system colibri
  useradd --system --gid colibri --home-dir /var/lib/colibri --no-create-home --shell /usr/sbin/nologin colibri
  groupadd --system colibri-agent
  useradd --system --gid colibri-agent --home-dir /var/lib/colibri-worker --no-create-home --shell /usr/sbin/nologin colibri-agent
  groupadd --system nats
  useradd --system --gid nats --home-dir /var/lib/nats --no-create-home --shell /usr/sbin/nologin nats
USERS
fi

cat <<'STEPS'

Then, on the host:
  cd /etc/colibri
  cp scheduler.toml.sample scheduler.toml     # the hub
  cp worker.toml.sample worker.toml           # every host with agents
  chown root:colibri scheduler.toml && chmod 0640 scheduler.toml
  chown root:colibri-agent worker.toml && chmod 0640 worker.toml   # holds agent API keys
  colibri-scheduler check-config --config /etc/colibri/scheduler.toml
  colibri-worker check-config --config /etc/colibri/worker.toml
  install nats-server as /usr/local/bin/nats-server (or edit ExecStart= in nats-server.service)
  systemctl daemon-reload
  systemctl enable --now nats-server colibri-scheduler   # the hub
  systemctl enable --now colibri-worker                  # every host with agents
STEPS
