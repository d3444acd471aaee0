#!/bin/sh
# Local demo: nats-server, the scheduler, two workers, a few tasks, and their
# lifecycle printed live. Everything runs under .demo/ and stops on exit.
# The hub is authenticated, as in production: `colibri admin` makes an nkey
# identity per process under .demo/identities, nats-server admits only those,
# and each process connects with its own seed and inbox prefix.
#
#   sh scripts/demo.sh            # COLIBRI_DEMO_PORT=4290 by default
set -eu
root=$(CDPATH='' cd -- "$(dirname -- "$0")/.." && pwd)
cd "$root"
COLIBRI_SETUP_NO_BUILD=1 sh scripts/setup.sh
cargo build --bins --quiet

port=${COLIBRI_DEMO_PORT:-4290}
demo="$root/.demo"
bin="$root/target/debug"
rm -rf "$demo"
mkdir -p "$demo/nats" "$demo/laptop" "$demo/gpu-box"
COLIBRI_NATS_URL="nats://127.0.0.1:$port"
export COLIBRI_NATS_URL
pids=""
ids="$demo/identities"

cleanup() {
    # shellcheck disable=SC2086
    [ -z "$pids" ] || kill $pids 2>/dev/null || true
    wait 2>/dev/null || true
    echo "demo: stopped; logs are in $demo"
}
trap cleanup EXIT INT TERM

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "identities first (colibri admin, in $ids): hub, an operator, one per host"
{
    "$bin/colibri" admin add-user scheduler hub --out "$ids"
    "$bin/colibri" admin add-user operator demo --out "$ids"
    "$bin/colibri" admin add-host laptop --capabilities linux --out "$ids"
    "$bin/colibri" admin add-host gpu-box --capabilities linux,gpu,image-render,screenshot --out "$ids"
} >/dev/null 2>"$demo/admin.log"
ls "$ids"
# identity NAME: the flags that connect as NAME.
identity() { echo "--nats-nkey $ids/$1.nk --inbox-prefix _INBOX.$1"; }
# This shell's `colibri` commands run as the operator.
COLIBRI_NATS_NKEY="$ids/demo.nk"
COLIBRI_INBOX_PREFIX="_INBOX.demo"
export COLIBRI_NATS_NKEY COLIBRI_INBOX_PREFIX

say "nats-server with JetStream on 127.0.0.1:$port, admitting only those identities"
cat >"$demo/nats-server.conf" <<CONF
host: "127.0.0.1"
port: $port
jetstream {
  store_dir: "$demo/nats"
}
include "identities/authorization.conf"
CONF
"$root/.tools/bin/nats-server" -c "$demo/nats-server.conf" >"$demo/nats.log" 2>&1 &
pids="$pids $!"

say "scheduler (board: $demo/board.db; hosts: $ids/hosts.json)"
# shellcheck disable=SC2046 # identity's words are separate flags
"$bin/colibri-scheduler" --db "$demo/board.db" --hosts "$ids/hosts.json" $(identity hub) >"$demo/scheduler.log" 2>&1 &
pids="$pids $!"
i=0
until "$bin/colibri" status >/dev/null 2>&1; do
    i=$((i + 1))
    [ "$i" -lt 100 ] || { echo "demo: scheduler did not come up; see $demo/scheduler.log"; exit 1; }
    sleep 0.1
done

say "lifecycle events, live (colibri events)"
"$bin/colibri" events &
pids="$pids $!"

confinement=unconfined
if command -v bwrap >/dev/null 2>&1 && bwrap --ro-bind / / --dev /dev --proc /proc --unshare-pid true 2>/dev/null; then
    confinement=bwrap
fi
# The `pi` profile of this demo runs the fake agent, which speaks pi's json mode.
cat >"$demo/worker.toml" <<TOML
[agents.pi]
argv = ["$bin/colibri-fake-agent", "--sleep-ms", "400", "{prompt}"]
TOML

say "two workers ($confinement): laptop [linux] x2, gpu-box [linux gpu image-render screenshot] x1"
# shellcheck disable=SC2046 # identity's words are separate flags
"$bin/colibri-worker" --config "$demo/worker.toml" --worker-id laptop --capabilities linux --slots 2 \
    --state-dir "$demo/laptop" --allow-command --confinement "$confinement" $(identity laptop) >"$demo/laptop.log" 2>&1 &
pids="$pids $!"
# shellcheck disable=SC2046 # identity's words are separate flags
"$bin/colibri-worker" --config "$demo/worker.toml" --worker-id gpu-box --capabilities linux,gpu,image-render,screenshot \
    --slots 1 --state-dir "$demo/gpu-box" --allow-command --confinement "$confinement" $(identity gpu-box) >"$demo/gpu-box.log" 2>&1 &
pids="$pids $!"
i=0
until [ "$("$bin/colibri" status --json | grep -c '"online": true')" -ge 2 ]; do
    i=$((i + 1))
    [ "$i" -lt 100 ] || { echo "demo: workers did not come up; see $demo/*.log"; exit 1; }
    sleep 0.1
done
"$bin/colibri" status

say "submitting tasks"
# shellcheck disable=SC2016 # expanded by the task's shell, not this one
hello=$("$bin/colibri" create-task --title "say hello" --capability linux -- sh -c 'echo hello from $(hostname)')
render=$("$bin/colibri" intake-task --title "render a thumbnail" --capability image-render,screenshot --agent pi --prompt "render the page")
"$bin/colibri" create-task --title "list files" --capability linux -- ls -la >/dev/null
iso=$("$bin/colibri" intake-task --title "iso intake check" --capability freebsd)
echo "hello=$hello render=$render iso=$iso"

say "the render task's session, replayed from its first event (colibri watch)"
"$bin/colibri" watch "$render" || true

say "continuing that session (--session): the prompt is built from its compacted transcript"
session=$("$bin/colibri" show-task "$render" --json | grep -o '"session": *"[0-9a-f-]*"' | head -n 1 | sed 's/.*"\([0-9a-f-]*\)"$/\1/')
next=$("$bin/colibri" create-task --title "refine the thumbnail" --agent pi --session "$session" --prompt "make it smaller")
"$bin/colibri" watch "$next" || true
"$bin/colibri" show-task "$render" | grep "transcript shared" || true

i=0
until [ "$("$bin/colibri" list-tasks --status running --json | grep -c task_id)" -eq 0 ] \
    && [ "$("$bin/colibri" list-tasks --status assigned --json | grep -c task_id)" -eq 0 ]; do
    i=$((i + 1))
    [ "$i" -lt 200 ] || break
    sleep 0.1
done

say "board"
"$bin/colibri" list-tasks
say "parked (no live worker has freebsd)"
"$bin/colibri" list-tasks --status queued
say "one task in full"
"$bin/colibri" show-task "$hello"
say "status"
"$bin/colibri" status
