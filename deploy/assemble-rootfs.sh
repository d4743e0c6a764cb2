#!/usr/bin/env bash
# Assembles the root file system of the Weft image from binaries already
# built: the three Weft binaries, the shared libraries `ldd` lists for them
# (and the dynamic loader), iptables (nft backend) with its libraries and
# extensions when this machine has it (`weft-sidecar init` runs it in the
# pod's init container), a CA bundle for https OTLP collectors, and a
# minimal /etc/passwd and /etc/group with `weft` (uid and gid 1337, the ids
# `weft-sidecar init` excludes from interception by default).
#
#   deploy/assemble-rootfs.sh BIN_DIR OUT_DIR [EXTRA_BINARY...]
#
# EXTRA_BINARY: more programs for /usr/local/bin (the example apps), by
# name in BIN_DIR, or an absolute path (/bin/sh) kept where it is.
#
# Used by deploy/build-image.sh (FROM scratch, here) and by the multi-stage
# deploy/Dockerfile (for users with a registry), so both images hold the
# same files.
set -euo pipefail

bin_dir=${1:?usage: assemble-rootfs.sh BIN_DIR OUT_DIR [EXTRA_BINARY...]}
out=${2:?usage: assemble-rootfs.sh BIN_DIR OUT_DIR [EXTRA_BINARY...]}
shift 2
bins=(weft-sidecar weft-control-plane weftctl)

for b in "${bins[@]}"; do
  if [ ! -x "$bin_dir/$b" ]; then
    echo "error: $bin_dir/$b is missing: build it first (cargo build --release -p weft-sidecar -p weft-control-plane)" >&2
    exit 1
  fi
done

mkdir -p "$out/usr/local/bin" "$out/etc" "$out/tmp" "$out/var/lib/weft" "$out/home/weft"
chmod 1777 "$out/tmp"

# Copies a file with its directories, following symlinks for the content
# but keeping the name the loader asks for.
copy_path() {
  local src=$1
  mkdir -p "$out$(dirname "$src")"
  cp -L "$src" "$out$src"
}

# Every library a binary needs, by the path the loader resolves today.
copy_libs() {
  ldd "$1" | awk '/=> \//{print $3} $1 ~ /^\//{print $1}' | while read -r lib; do
    [ -e "$out$lib" ] || copy_path "$lib"
  done
}

# Installs a program of BIN_DIR without its debug sections (a debug build's
# binaries are ~200 MB each, mostly DWARF); symbols stay for backtraces.
install_bin() {
  install -m 0755 "$bin_dir/$1" "$out/usr/local/bin/$1"
  if command -v strip >/dev/null 2>&1; then
    strip --strip-debug "$out/usr/local/bin/$1"
  fi
  copy_libs "$bin_dir/$1"
}

for b in "${bins[@]}"; do
  install_bin "$b"
done

for extra in "$@"; do
  case "$extra" in
    /*) copy_path "$extra"; copy_libs "$extra" ;;
    *)
      [ -x "$bin_dir/$extra" ] || { echo "error: $bin_dir/$extra is missing" >&2; exit 1; }
      install_bin "$extra"
      ;;
  esac
done

# iptables for the init container: Debian's nft backend is one binary
# (xtables-nft-multi) behind the iptables names, plus its extensions.
if multi=$(command -v xtables-nft-multi 2>/dev/null); then
  copy_path "$multi"
  copy_libs "$multi"
  for name in iptables ip6tables iptables-save ip6tables-save iptables-restore ip6tables-restore; do
    ln -sf "$multi" "$out/usr/sbin/$name"
  done
  ext=$(dirname "$(ldd "$multi" | awk '/libxtables/{print $3}')")/xtables
  if [ -d "$ext" ]; then
    mkdir -p "$out$ext"
    cp -L "$ext"/*.so "$out$ext/"
    for so in "$ext"/*.so; do copy_libs "$so"; done
  fi
else
  echo "warning: xtables-nft-multi not found (apt-get install iptables): the image has no iptables, so 'weft-sidecar init' cannot run in it" >&2
fi

if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
  copy_path /etc/ssl/certs/ca-certificates.crt
fi

cat > "$out/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
weft:x:1337:1337:weft:/home/weft:/sbin/nologin
PASSWD
cat > "$out/etc/group" <<'GROUP'
root:x:0:
nogroup:x:65534:
weft:x:1337:
GROUP
# The resolver needs nsswitch to look names up in files then DNS.
echo 'hosts: files dns' > "$out/etc/nsswitch.conf"
