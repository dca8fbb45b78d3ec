"""Stacks for tests: plans built from YAML text and a recorded CPU host, and extra stacks that together make
stackgen emit every flag it can (KV quantization, partial offload, multi-GPU split, API key, overrides, tensor
parallel, fp8, MLX concurrency)."""

from __future__ import annotations

import json
from pathlib import Path

from stackgen.host.facts import HostFacts
from stackgen.plan.plan import Plan
from stackgen.plan.resolve import resolve
from stackgen.spec.stack import load_stack

CPU_HOST = {"hardware": {"gpus": [], "memory_gib": 24, "memory_bandwidth_gbs": 50,
                         "cpu": {"cores": 2, "threads": 2, "arch": "x86_64"}, "os": "linux"},
            "available_memory_bytes": 20_000_000_000, "notes": []}

EXTRA_STACKS = {
    # 8 users on an 8 GB card: the planner quantizes the KV cache and keeps some layers on the CPU.
    "llama-kvq-offload": """
version: 1
hardware: rtx-4060
workload: team-api
services:
  chat: {model: llama-3.1-8b-instruct, engine: llama.cpp, quant: Q8_0}
""",
    # Two GPUs: layer split with a tensor split; an API key; overrides of both spellings.
    "llama-multi-gpu-key-overrides": """
version: 1
hardware: 2x rtx-3090
workload: team-api
serve: {host: 0.0.0.0, api_key_env: STACKGEN_TEST_KEY}
services:
  chat:
    model: qwen2.5-32b-instruct
    engine: llama.cpp
    overrides: {cache-ram: 0, -lv: 3, no-webui: true, ctx-size: 16384}
""",
    "vllm-tp-key-overrides": """
version: 1
hardware: 2x h100-80gb
workload: team-api
serve: {host: 127.0.0.1, api_key_env: STACKGEN_TEST_KEY}
services:
  api:
    model: llama-3.1-70b-instruct
    engine: vllm
    overrides: {kv-cache-dtype: fp8, max-num-batched-tokens: 4096, enforce-eager: true}
""",
    "vllm-fp8": """
version: 1
hardware: l4
workload: {concurrent_users: 16, context_tokens: 32768}
services:
  api: {model: llama-3.1-8b-instruct, engine: vllm, quant: fp8}
""",
    "vllm-cpu": """
version: 1
hardware: cpu-server-64gb
workload: dev-loop
services:
  api: {model: qwen2.5-0.5b-instruct, engine: vllm}
""",
    "mlx-concurrent": """
version: 1
hardware: m4-max-128gb
workload: team-api
services:
  dev: {model: qwen2.5-7b-instruct, engine: mlx, overrides: {prompt-cache-size: 4}}
""",
    "ollama-tuned": """
version: 1
hardware: rtx-4090
workload: dev-loop
services:
  chat:
    model: ollama:llama3.1:8b
    engine: ollama
    system: "You are terse.\\nAnswer in one line."
    overrides: {temperature: 0.2, OLLAMA_MAX_QUEUE: 64, stop: "<|eot_id|>"}
""",
    # Past the trained context with YaRN (llama.cpp flags, vLLM --hf-overrides) and vLLM's structured-output backend.
    "yarn-structured-output": """
version: 1
hardware: h100-80gb
workload: {concurrent_users: 1, context_tokens: 65536}
services:
  chat: {model: qwen2.5-7b-instruct, engine: llama.cpp, structured_output: {}}
  api: {model: qwen2.5-7b-instruct, engine: vllm, quant: awq, structured_output: {backend: guidance}}
""",
}


def write_host(folder: Path) -> Path:
    path = folder / "host.json"
    path.write_text(json.dumps(CPU_HOST), encoding="utf-8")
    return path


def plan_for(folder: Path, text: str, name: str = "stack.yaml") -> Plan:
    folder.mkdir(parents=True, exist_ok=True)
    stack = folder / name
    stack.write_text(text, encoding="utf-8")
    return resolve(load_stack(stack), HostFacts.load(write_host(folder)))
