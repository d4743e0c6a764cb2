#!/usr/bin/env bash
# The quick start: builds Weft and the restaurant example, then runs the
# control plane, two user-service instances and one order-service, each with
# its sidecar, sends traffic through the mesh and prints what happened.
# Ctrl-C stops everything. Extra arguments go to the quickstart binary
# (see --help), e.g. --requests 1000 or --once.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bins -p weft-sidecar -p weft-control-plane -p weft-examples
exec target/release/quickstart "$@"
