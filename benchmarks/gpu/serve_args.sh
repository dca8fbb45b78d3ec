# Written by: for s in one sixteen; do stackgen plan benchmarks/gpu/stacks/$s.yaml --json; done (the argv stackgen
# renders for llama-server; the binary name dropped, the device script runs its own CUDA build).
SERVE_ONE=(-m /tmp/gm/llama3-8b-q4_k.gguf --alias llama --host 127.0.0.1 --port 8301 -c 8192 -np 1 -ngl all --fit off -t 16 -b 2048 -ub 512 --cache-ram 2048 --metrics --cors-origins localhost --no-cors-credentials)
SERVE_SIXTEEN=(-m /tmp/gm/llama3-8b-q4_k.gguf --alias llama --host 127.0.0.1 --port 8302 -c 131072 -np 16 -ngl all --fit off -t 16 -b 2048 -ub 512 --cache-ram 8192 --metrics --cors-origins localhost --no-cors-credentials)
