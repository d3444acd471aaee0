#!/bin/sh
# The test suite: installs what is missing (nats-server, bubblewrap and
# the linters), builds every binary the end-to-end tests drive, and runs all
# tests of the workspace against real nats-server processes.
set -eu
root=$(CDPATH='' cd -- "$(dirname -- "$0")/.." && pwd)
cd "$root"
COLIBRI_SETUP_NO_BUILD=1 sh scripts/setup.sh
PATH="$root/.tools/bin:$PATH"
export PATH
cargo build --bins --quiet
cargo test --workspace --no-fail-fast "$@"
