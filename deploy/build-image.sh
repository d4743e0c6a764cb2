#!/usr/bin/env bash
# Builds the Weft image (localhost/weft:dev) on a machine without a
# container registry: the binaries built here, the libraries they need and
# a minimal passwd, FROM scratch (deploy/Dockerfile.local), with podman's
# vfs storage driver (works without overlay support or root-only mounts).
#
#   deploy/build-image.sh [--debug] [--bin-dir DIR] [--tag TAG] [--examples]
#
# --examples builds localhost/weft-examples:dev instead: the same files
# plus the restaurant's apps and /bin/sh (deploy/compose.yaml runs them).
# --debug takes target/debug (faster to build, bigger); the default builds
# and takes target/release; --bin-dir DIR takes binaries already built
# there and builds nothing. deploy/Dockerfile is the same image for those
# who can pull rust and distroless.
set -euo pipefail
cd "$(dirname "$0")/.."

profile=release
bin_dir=
tag=
examples=
while [ $# -gt 0 ]; do
  case "$1" in
    --debug) profile=debug ;;
    --examples) examples=1 ;;
    --tag) tag=${2:?--tag needs a value}; shift ;;
    --bin-dir) bin_dir=${2:?--bin-dir needs a directory}; shift ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "error: unknown argument $1 (try --help)" >&2; exit 2 ;;
  esac
  shift
done

if ! command -v podman >/dev/null 2>&1; then
  echo "error: podman is missing (apt-get install podman)" >&2
  exit 1
fi

packages=(-p weft-sidecar -p weft-control-plane)
extra=()
if [ -n "$examples" ]; then
  packages+=(-p weft-examples)
  extra=(user-service order-service /bin/sh)
  # The queue helper's app, once it exists.
  [ -f examples/src/bin/email-service.rs ] && extra+=(email-service)
  tag=${tag:-localhost/weft-examples:dev}
fi
tag=${tag:-localhost/weft:dev}

if [ -n "$bin_dir" ]; then
  :
elif [ "$profile" = release ]; then
  cargo build --release "${packages[@]}" --bins
  bin_dir=target/release
else
  cargo build "${packages[@]}" --bins
  bin_dir=target/debug
fi

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
deploy/assemble-rootfs.sh "$bin_dir" "$ctx/rootfs" "${extra[@]}"
cp deploy/Dockerfile.local "$ctx/Dockerfile"
podman --storage-driver vfs build --tag "$tag" --file "$ctx/Dockerfile" "$ctx"
echo "built $tag"
