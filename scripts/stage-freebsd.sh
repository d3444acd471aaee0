#!/bin/sh
# Stages Colibri for a FreeBSD host into an image root:
#   scripts/stage-freebsd.sh ROOT [BINDIR]
# installs the binaries (from BINDIR, default target/release of this checkout),
# the rc.d scripts, the newsyslog config, the hub's nats-server config and the
# sample configs under ROOT, then prints the user, group and rc.conf steps.
# Users and groups are created only when ROOT is / and we are root with pw(8);
# otherwise the commands are printed. Runs on Linux too (into a temp dir).
set -eu
umask 022

usage() { echo "usage: $0 ROOT [BINDIR]" >&2; exit 2; }
die() { echo "stage-freebsd: $*" >&2; exit 1; }

case $# in 1 | 2) ;; *) usage ;; esac
root=$1
[ -n "$root" ] || usage
repo=$(CDPATH='' cd -- "$(dirname -- "$0")/.." && pwd)
bindir=${2:-$repo/target/release}
pkg=$repo/packaging/freebsd
binaries="colibri-scheduler colibri-worker colibri"

for b in $binaries; do
    [ -f "$bindir/$b" ] || die "$bindir/$b not found: build with cargo build --release, or give BINDIR"
done
mkdir -p "$root" || die "cannot create $root"
root=$(CDPATH='' cd -- "$root" && pwd)
# "//" and "/" both mean the live system; strip the slash for path joins.
prefix=${root%/}

install -d -m 0755 "$prefix/usr/local/bin" "$prefix/usr/local/etc/rc.d" \
    "$prefix/usr/local/etc/newsyslog.conf.d" "$prefix/usr/local/etc/colibri"
install -d -m 0750 "$prefix/var/db/colibri" "$prefix/var/db/colibri-worker" \
    "$prefix/var/log/colibri"
for b in $binaries; do
    install -m 0755 "$bindir/$b" "$prefix/usr/local/bin/$b"
done
install -m 0755 "$pkg/rc.d/colibri_scheduler" "$prefix/usr/local/etc/rc.d/colibri_scheduler"
install -m 0755 "$pkg/rc.d/colibri_worker" "$prefix/usr/local/etc/rc.d/colibri_worker"
install -m 0644 "$pkg/newsyslog.conf.d/colibri.conf" "$prefix/usr/local/etc/newsyslog.conf.d/colibri.conf"
install -m 0644 "$pkg/nats-server.conf" "$prefix/usr/local/etc/colibri/nats-server.conf"
install -m 0644 "$pkg/rc.conf.sample" "$prefix/usr/local/etc/colibri/rc.conf.sample"
install -m 0644 "$pkg/scheduler.toml" "$prefix/usr/local/etc/colibri/scheduler.toml.sample"
install -m 0644 "$pkg/worker.toml" "$prefix/usr/local/etc/colibri/worker.toml.sample"
echo "staged Colibri for FreeBSD into $root"

# Users: colibri runs the scheduler; colibri-agent runs the agents in jails.
user_cmds='pw groupadd colibri
pw useradd colibri -g colibri -d /var/db/colibri -s /usr/sbin/nologin -c "Colibri scheduler"
pw groupadd colibri-agent
pw useradd colibri-agent -g colibri-agent -d /nonexistent -s /usr/sbin/nologin -c "Colibri agents"'
if [ "$root" = / ] && [ "$(id -u)" -eq 0 ] && command -v pw >/dev/null 2>&1; then
    for u in colibri colibri-agent; do
        pw groupshow "$u" >/dev/null 2>&1 || pw groupadd "$u"
        if ! pw usershow "$u" >/dev/null 2>&1; then
            if [ "$u" = colibri ]; then
                pw useradd colibri -g colibri -d /var/db/colibri -s /usr/sbin/nologin -c "Colibri scheduler"
            else
                pw useradd colibri-agent -g colibri-agent -d /nonexistent -s /usr/sbin/nologin -c "Colibri agents"
            fi
        fi
    done
    chown colibri:colibri /var/db/colibri /var/log/colibri
    echo "created users and groups colibri and colibri-agent"
else
    echo
    echo "Create the users and groups (as root on the host):"
    printf '%s\n' "$user_cmds" | sed 's/^/  /'
    echo "  chown colibri:colibri /var/db/colibri /var/log/colibri"
fi

cat <<'STEPS'

Then, on the host:
  cd /usr/local/etc/colibri
  cp scheduler.toml.sample scheduler.toml     # the hub
  cp worker.toml.sample worker.toml           # every host with agents
  chown root:colibri scheduler.toml && chmod 0640 scheduler.toml
  chmod 0600 worker.toml                      # holds agent API keys
  colibri-scheduler check-config --config /usr/local/etc/colibri/scheduler.toml
  colibri-worker check-config --config /usr/local/etc/colibri/worker.toml
  pkg install nats-server                     # the hub; config: nats-server.conf here
  install -d -o nats -g nats -m 0750 /var/db/nats   # JetStream store_dir; owner: the user the nats rc.d script runs as
  sysrc colibri_scheduler_enable=YES          # the hub
  sysrc colibri_worker_enable=YES             # every host with agents
  service colibri_scheduler start
  service colibri_worker start
See /usr/local/etc/colibri/rc.conf.sample for every rc.conf variable.
STEPS
