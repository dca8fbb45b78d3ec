"""How each engine becomes a candidate (resolve._candidate) and what the chosen one's plan says about it
(resolve._knob_reasons, _pin_reasons, _why, the refusal of a pinned engine): the structured-output backend an
engine lacks rules it out with the engine's own words; YaRN from the model file is "applied by the engine from the
model file" only for an engine that takes no RoPE flag (MLX), "set on the command line" for one that does (vLLM);
an engine that cannot apply the YaRN a plan needs is refused with its reason and the context that needs it; a knob
pinned to what stackgen would choose anyway gets no "(stackgen would have chosen ...)" tail; the weights note of a
mapped quant becomes a warning."""

from __future__ import annotations

import json
import struct

import pytest

from stackgen import engines
from stackgen.errors import PlanError
from stackgen.host.facts import HostFacts
from stackgen.plan import resolve
from stackgen.spec.stack import SpecError, load_stack

HOST = HostFacts(hardware=None)  # type: ignore[arg-type]
PINNED = "not chosen: the stack pins the engine"
SGLANG_KEY = engines.get("sglang").key_required
LLAMA_GUIDANCE = ("structured_output.backend guidance is a vLLM setting; llama-server constrains output with its own "
                  "grammar sampler (leave backend: auto)")
OLLAMA_GUIDANCE = ("structured_output.backend guidance is a vLLM setting; Ollama constrains output with llama.cpp's "
                   "grammar sampler (leave backend: auto)")
YARN = ("context: 1024 tokens per request is past hf's trained 512: YaRN RoPE scaling, factor 2 over 512 original "
        "positions (config.json rope_scaling; {how}), KV cache planned at 1024; static YaRN can lower quality on short "
        "texts, so it is on only because the workload asks for more")
TINY_WL = "{concurrent_users: 1, context_tokens: 1024, prompt_tokens: 500, output_tokens: 100}"


def plan(write_stack, body: str):
    return resolve.resolve(load_stack(write_stack("version: 1\n" + body)), HOST).services


def refusal(write_stack, body: str) -> str:
    with pytest.raises(PlanError) as exc:
        plan(write_stack, body)
    return str(exc.value)


def yarn_folder(root, rope_theta: float | None = 10000.0):
    """A 2-layer Llama HF folder trained to 512 tokens whose config.json carries YaRN factor 4 over 512 positions
    (reach 2048): 1024 tokens need factor 2 (the smallest factor that reaches them), read from the file (in_file)."""
    root.mkdir()
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 128, "intermediate_size": 256,
           "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32,
           "vocab_size": 1024, "max_position_embeddings": 512, "torch_dtype": "bfloat16",
           "rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 512}}
    if rope_theta is not None:
        cfg["rope_theta"] = rope_theta
    (root / "config.json").write_text(json.dumps(cfg))
    header = json.dumps({"w": {"dtype": "BF16", "shape": [1024, 128], "data_offsets": [0, 1024 * 128 * 2]}}).encode()
    (root / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + bytes(1024 * 128 * 2))
    return root


# ---------------------------------------------------------------------------------------------- structured output


def test_a_backend_the_preferred_engines_lack_passes_the_service_to_vllm(write_stack):
    """One user on an RTX 4090: gpu-single-user prefers llama.cpp, then Ollama, then vLLM. backend: guidance is a vLLM
    setting: llama.cpp and Ollama each refuse it in their own words (their structured_output()[0]), so vLLM serves
    it, "next in line", naming both refusals; its reason says what guidance costs (vLLM's structured_output()[1])."""
    sp, = plan(write_stack, "hardware: rtx-4090\nworkload: {concurrent_users: 1, context_tokens: 8192}\nservices:\n"
               "  s: {model: qwen2.5-7b-instruct, structured_output: {backend: guidance}}\n")
    assert sp.engine == "vllm"
    assert sp.rejected["llama.cpp"] == LLAMA_GUIDANCE and sp.rejected["ollama"] == OLLAMA_GUIDANCE
    row = ("one user on a consumer NVIDIA GPU (GeForce RTX 4090): llama.cpp gives the most predictable single-stream "
           "speed and full control of every flag")
    assert sp.reasons[0] == (f"vLLM: next in line for this workload ({row}). Preferred engines could not serve it "
                             f"(llama.cpp (llama-server): {LLAMA_GUIDANCE}; Ollama: {OLLAMA_GUIDANCE})")
    assert "structured output: " + engines.get("vllm").structured_output("guidance")[1] in sp.reasons
    assert "with the guidance backend" in engines.get("vllm").structured_output("guidance")[1]


def test_backend_auto_is_served_by_the_preferred_engine_and_its_cost_said(write_stack):
    """backend: auto is llama-server's own grammar sampler: llama.cpp keeps its place and its reason says the schema
    becomes a GBNF grammar per request; SGLang's xgrammar backend is said as its default."""
    sp, = plan(write_stack, "hardware: rtx-4090\nworkload: {concurrent_users: 1, context_tokens: 8192}\nservices:\n"
               "  s: {model: qwen2.5-7b-instruct, structured_output: {}}\n")
    assert sp.engine == "llama.cpp"
    said = [r for r in sp.reasons if r.startswith("structured output: ")]
    assert said == ["structured output: " + engines.get("llama.cpp").structured_output("auto")[1]]
    assert "converted to a GBNF grammar per request" in said[0]
    sg = engines.get("sglang")
    assert sg.structured_output("auto")[0] is None and "xgrammar (its default)" in sg.structured_output("auto")[1]


def test_mlx_refuses_structured_output_in_its_own_words(write_stack):
    """mlx_lm.server reads no response_format: MLX pinned with structured_output is refused with exactly its
    reason (no hint: the block is not about memory, so nothing smaller would help); by validate, at the field, since
    it needs nothing but the stack (tests/spec/test_validate_plan_refusals.py)."""
    with pytest.raises(SpecError) as exc:
        plan(write_stack, "hardware: m3-max-64gb\nworkload: dev-loop\nservices:\n"
                          "  s: {model: qwen2.5-7b-instruct, engine: mlx, structured_output: {}}\n")
    assert str(exc.value).endswith("services.s.structured_output: engine mlx cannot take it: mlx_lm.server has no "
                                   "JSON-schema or grammar constraint (it ignores response_format); use llama.cpp or "
                                   "vLLM for structured output")


# ---------------------------------------------------------------------------------------------- a pinned engine


def test_a_pinned_engine_the_hardware_rules_out_is_refused_without_a_hint(write_stack):
    """MLX pinned on an RTX 4090: its hardware block, and nothing after it (no memory plan was made, so there is no
    lever to offer: not even an empty line)."""
    text = refusal(write_stack, "hardware: rtx-4090\nworkload: dev-loop\nservices:\n"
                   "  s: {model: qwen2.5-7b-instruct, engine: mlx}\n")
    assert text.endswith(": services.s: engine mlx cannot serve qwen2.5-7b-instruct: needs Apple silicon (this "
                         "machine has GeForce RTX 4090)")


def test_the_other_engines_of_a_pinned_service_say_what_else_rules_them_out(write_stack):
    """llama.cpp pinned on an RTX 4090: Ollama and vLLM could serve it and only lose to the pin; MLX (hardware) and
    SGLang (its API key, on loopback too) could not anyway, and say so after the pin."""
    sp, = plan(write_stack, "hardware: rtx-4090\nworkload: dev-loop\nservices:\n"
               "  s: {model: qwen2.5-7b-instruct, engine: llama.cpp}\n")
    assert sp.reasons[0] == "engine: llama.cpp is set in the stack file"
    assert sp.rejected == {
        "ollama": PINNED, "vllm": PINNED,
        "mlx": f"{PINNED} (and: needs Apple silicon (this machine has GeForce RTX 4090))",
        "sglang": f"{PINNED} (and: {SGLANG_KEY})"}


def test_a_pinned_engine_that_cannot_apply_the_yarn_is_refused_with_the_context_that_needs_it(write_stack):
    """Ollama pinned at 65536 tokens on Qwen2.5 7B (trained 32768, YaRN from the model card, not in the GGUF): Ollama
    has no RoPE PARAMETER, so it is refused with its rope_block and the context; the hint offers only what makes
    Ollama serve it: 32768 tokens (a smaller quant would fit the memory but still need the YaRN Ollama cannot
    apply, so it is not offered)."""
    text = refusal(write_stack, "hardware: h100-80gb\nworkload: {concurrent_users: 1, context_tokens: 65536}\n"
                   "services:\n  s: {model: qwen2.5-7b-instruct, engine: ollama}\n")
    head, hint = text.split("\n")
    assert head.endswith(": services.s: engine ollama cannot serve qwen2.5-7b-instruct: Ollama has no RoPE-scaling "
                         "PARAMETER (api/types.go Options): it applies YaRN only from a GGUF's rope.scaling keys, and "
                         "this model has none; ask for at most 32768 tokens or use llama.cpp (65536 tokens per request "
                         "are past qwen2.5-7b-instruct's trained 32768)")
    assert hint == "Each of these fits: `context_tokens: 32768` (Ollama fits it). Or a smaller model, or more memory."


def test_auto_passes_over_an_engine_that_cannot_apply_the_yarn(write_stack, tmp_path):
    """The YaRN folder without rope_theta on an A100, one user: vLLM cannot render
    its RoPE override without the model's rope_theta, so it is rejected with that reason and the context that needs
    it; llama.cpp and Ollama cannot load the HF folder; SGLang renders no RoPE override; nothing serves it (before
    the SGLang fix, SGLang served it past the trained 512 tokens with no scaling)."""
    folder = yarn_folder(tmp_path / "hf", rope_theta=None)
    text = refusal(write_stack, f"hardware: a100-80gb\nworkload: {TINY_WL}\nserve: {{api_key_env: K}}\nservices:\n"
                   f"  s: {{model: {folder}}}\n")
    assert ("  - vLLM: its RoPE override (--hf-overrides rope_parameters) replaces the model's whole rope settings and "
            "the model's rope_theta is unknown (1024 tokens per request are past hf's trained 512)") in text.split("\n")
    assert ("  - SGLang: " + engines.get("sglang").rope_block(None) + " (1024 tokens per request are past hf's "
            "trained 512)") in text.split("\n")


def test_sglang_past_the_trained_context_is_refused_not_launched_without_yarn(write_stack):
    """SGLang pinned at 65536 tokens on Qwen2.5 7B (trained 32768): its plan needs YaRN factor 2 like every engine's
    (memory.with_rope), and stackgen renders no SGLang RoPE override, so it is refused with that reason; 32768 tokens
    fit. (Before the fix SGLang's plan skipped with_rope: it was launched with --context-length 65536 and no
    scaling.)"""
    text = refusal(write_stack, "hardware: h100-80gb\nworkload: {concurrent_users: 1, context_tokens: 65536}\n"
                   "serve: {api_key_env: K}\nservices:\n  s: {model: qwen2.5-7b-instruct, engine: sglang}\n")
    head, hint = text.split("\n")
    assert head.endswith(": services.s: engine sglang cannot serve qwen2.5-7b-instruct: "
                         + engines.get("sglang").rope_block(None)
                         + " (65536 tokens per request are past qwen2.5-7b-instruct's trained 32768)")
    assert hint == "Each of these fits: `context_tokens: 32768` (SGLang fits it). Or a smaller model, or more memory."
    sp, = plan(write_stack, "hardware: h100-80gb\nworkload: {concurrent_users: 1, context_tokens: 32768}\n"
               "serve: {api_key_env: K}\nservices:\n  s: {model: qwen2.5-7b-instruct, engine: sglang}\n")
    assert sp.memory.context_per_request == 32768 and sp.memory.rope_scaling is None


# ---------------------------------------------------------------------------------------------- YaRN from the file


def test_yarn_from_the_model_file_is_the_engines_own_on_mlx(write_stack, tmp_path):
    """mlx_lm builds YaRN from config.json (rope_flag False): "applied by the engine from the model file"."""
    folder = yarn_folder(tmp_path / "hf")
    sp, = plan(write_stack, f"hardware: m3-max-64gb\nworkload: {TINY_WL}\nservices:\n  s: {{model: {folder}}}\n")
    assert sp.engine == "mlx" and sp.memory.context_per_request == 1024
    assert YARN.format(how="applied by the engine from the model file") in sp.reasons


def test_yarn_from_the_model_file_is_still_a_flag_on_vllm(write_stack, tmp_path):
    """vLLM takes RoPE scaling on its command line (--hf-overrides): the same file's YaRN is "set on the command
    line" there."""
    folder = yarn_folder(tmp_path / "hf")
    sp, = plan(write_stack, f"hardware: a100-80gb\nworkload: {TINY_WL}\nservices:\n"
               f"  s: {{model: {folder}, engine: vllm}}\n")
    assert YARN.format(how="set on the command line") in sp.reasons
    assert "--hf-overrides" in sp.command


# ---------------------------------------------------------------------------------------------- pins and notes


def test_a_knob_pinned_to_what_stackgen_would_choose_has_no_tail(write_stack):
    """-t 16 on the 16-core RTX 4090 box (one service: stackgen gives it every core): the reason says the pin and no
    "(stackgen would have chosen 16 threads)"; -t 3 does get the tail (tests/plan/test_overrides_plan.py)."""
    sp, = plan(write_stack, "hardware: rtx-4090\nworkload: dev-loop\nservices:\n"
               "  s: {model: qwen2.5-7b-instruct, engine: llama.cpp, overrides: {-t: 16}}\n")
    assert sp.threads == 16
    assert [r for r in sp.reasons if r.startswith("pinned by overrides: ")] == ["pinned by overrides: -t 16"]
    sp, = plan(write_stack, "hardware: rtx-4090\nworkload: dev-loop\nservices:\n"
               "  s: {model: qwen2.5-7b-instruct, engine: llama.cpp, overrides: {-t: 4}}\n")
    assert [r for r in sp.reasons if r.startswith("pinned by overrides: ")] == [
        "pinned by overrides: -t 4 (stackgen would have chosen 16 threads)"]


def test_a_mapped_quant_is_a_warning(write_stack):
    """quant: awq on llama.cpp: not a GGUF type, the nearest GGUF (Q4_K_M) is planned and the weights note says so."""
    sp, = plan(write_stack, "hardware: rtx-4090\nworkload: dev-loop\nservices:\n"
               "  s: {model: qwen2.5-7b-instruct, engine: llama.cpp, quant: awq}\n")
    assert sp.memory.weights_format == "Q4_K_M"
    assert sp.warnings == ("awq is not a GGUF type; llama.cpp would load the nearest GGUF, Q4_K_M",)


def test_the_spilling_engine_says_how_many_layers_run_where(write_stack):
    """Llama 3.1 70B for 4 users on an RTX 4090: vLLM (first in gpu-multi-user) needs the 141 GB of bf16 weights in
    GPU memory; llama.cpp serves it with part of the 80 layers on the GPU: its reason names the layers on the GPU
    and the rest (80 less those) on the CPU, then vLLM's refusal."""
    sp, = plan(write_stack, "hardware: rtx-4090\nworkload: {concurrent_users: 4, context_tokens: 8192}\nservices:\n"
               "  s: {model: llama-3.1-70b-instruct}\n")
    g = sp.memory.gpu_layers
    assert sp.engine == "llama.cpp" and 0 < g < 80 == sp.memory.total_layers
    assert sp.reasons[0] == (f"llama.cpp (llama-server): the model must spill to system RAM: llama.cpp keeps {g} of 80 "
                             f"layers on the GPU and runs the other {80 - g} on the CPU. Preferred engines could not "
                             f"serve it (vLLM: {sp.rejected['vllm']})")
    assert sp.rejected["vllm"].startswith("needs 143.8 GB of GPU memory: 141.1 GB of weights (bf16), ")


def test_overrides_of_an_auto_service_are_planned_for_the_engine_chosen(write_stack):
    """engine: auto with -np 2: the overrides are validated for every engine and planned for each candidate (only a
    service that names another engine plans the rest without them), so llama.cpp, chosen, runs 2 slots and says
    what it would have chosen."""
    sp, = plan(write_stack, "hardware: rtx-4090\nworkload: dev-loop\nservices:\n"
               "  s: {model: qwen2.5-7b-instruct, overrides: {-np: 2}}\n")
    assert sp.engine == "llama.cpp" and sp.memory.parallel == 2
    assert "pinned by overrides: -np 2 (stackgen would have chosen 1 parallel requests)" in sp.reasons


def test_a_pinned_engine_does_not_lift_the_others_hardware_blocks(write_stack):
    """llama.cpp pinned on a CPU-only server: "explicit" (which lets vLLM's and MLX's CPU builds run when named)
    applies to the named engine only: the others still say why the machine rules them out."""
    sp, = plan(write_stack, "hardware: cpu-server-64gb\nworkload: dev-loop\nservices:\n"
               "  s: {model: qwen2.5-0.5b-instruct, engine: llama.cpp}\n")
    assert sp.rejected == {
        "ollama": PINNED,
        "vllm": f"{PINNED} (and: needs a CUDA or ROCm GPU for PagedAttention and continuous batching; this machine "
                "has none)",
        "mlx": f"{PINNED} (and: needs Apple silicon (this machine has CPU-only (16 cores, 64 GiB RAM)))",
        "sglang": f"{PINNED} (and: needs a CUDA GPU (its CPU backend targets Xeon servers with AMX and is not a "
                  "supported serving setup); this machine has none)"}


def test_a_serve_block_does_not_replace_an_engines_own_block(write_stack):
    """serve.host 0.0.0.0 rules out the engines without an API key (Ollama, MLX); MLX is already ruled out by the
    RTX 4090 and keeps that, first, reason."""
    sp, = plan(write_stack, "hardware: rtx-4090\nworkload: {concurrent_users: 1, optimize: setup}\n"
               "serve: {host: 0.0.0.0, api_key_env: MY_KEY}\nservices:\n  s: {model: llama-3.1-8b-instruct}\n")
    assert sp.engine == "llama.cpp"
    assert sp.rejected["mlx"] == "needs Apple silicon (this machine has GeForce RTX 4090)"
    assert sp.rejected["ollama"].startswith("has no API key option, and serve.host 0.0.0.0 is not loopback")


AMD_STACK = ("hardware:\n  gpus:\n    - {{vendor: amd, name: {name}, memory_gib: {mem}, bandwidth_gbs: {bw}, tier: datacenter, "
             "memory_type: hbm{arch}}}\n  memory_gib: 128\n  memory_bandwidth_gbs: 100\n  os: linux\n  cpu: {{cores: 32}}\n"
             "workload: {{concurrent_users: 16, optimize: throughput}}\nservices:\n  s: {{model: qwen2.5-7b-instruct}}\n")


def test_vllm_and_sglang_refuse_an_instinct_gpu_of_a_target_their_rocm_builds_leave_out(write_stack):
    """vLLM's Instinct targets are gfx90a / gfx942 / gfx950 (its installation docs), SGLang's gfx942 / gfx950: an
    Instinct MI50 (gfx906) at 16 users goes to llama.cpp with both refused by name and target; an MI210 (gfx90a, as
    rocm-smi prints it, feature flags included) keeps vLLM and is refused by SGLang only; without a stated target the
    MI50 is given the benefit of the doubt (the datacenter tier decides, as before)."""
    mi50 = dict(name="Radeon Instinct MI50", mem=32, bw=1024)
    sp, = plan(write_stack, AMD_STACK.format(arch=", arch: gfx906", **mi50))
    assert sp.engine == "llama.cpp"
    assert "its ROCm builds target gfx90a, gfx942, gfx950, gfx1100, gfx1101, gfx1200, gfx1201, gfx1150, gfx1151, not the " \
        "Radeon Instinct MI50's gfx906" in sp.rejected["vllm"]
    assert "its ROCm builds target gfx942, gfx950, not the Radeon Instinct MI50's gfx906" in sp.rejected["sglang"]
    mi210, = plan(write_stack, AMD_STACK.format(arch=', arch: "gfx90a:sramecc+:xnack-"', name="Instinct MI210", mem=64,
                                                bw=1638.4))
    assert "ROCm builds" not in mi210.rejected.get("vllm", "")
    assert "not the Instinct MI210's gfx90a" in mi210.rejected["sglang"]
    unstated, = plan(write_stack, AMD_STACK.format(arch="", **mi50))
    assert "ROCm builds target" not in unstated.rejected.get("vllm", "")


RADEON_STACK = ("hardware:\n  gpus:\n    - {{vendor: amd, name: {name}, memory_gib: 24, bandwidth_gbs: 960{arch}}}\n"
                "  memory_gib: 64\n  memory_bandwidth_gbs: 80\n  os: linux\n  cpu: {{cores: 16}}\n"
                "workload: {{concurrent_users: 8, optimize: throughput}}\nservices:\n  s: {{model: qwen2.5-7b-instruct, "
                "engine: vllm}}\n")


def test_vllm_serves_the_radeons_its_rocm_builds_ship_for(write_stack):
    """vLLM's installation docs list Radeon RX 7900 (gfx1100/1101), RX 9000 (gfx1200/1201) and Ryzen AI Max / AI 300
    (gfx1151/1150) among its ROCm GPUs: a stack that names vLLM on a Radeon of one of those targets plans it (it was
    refused as "consumer Radeon cards are llama.cpp's"); a Radeon of another target (an RX 6800 XT, gfx1030) is
    refused by name and target, and one whose target is not stated with what to write."""
    sp, = plan(write_stack, RADEON_STACK.format(name="Radeon RX 7900 XTX", arch=", arch: gfx1100"))
    assert sp.engine == "vllm" and not sp.memory.host_bytes > sp.memory.host_budget_bytes
    with pytest.raises(PlanError, match=r"not the Radeon RX 6800 XT's gfx1030 \(llama.cpp's ROCm/Vulkan serve it\)"):
        plan(write_stack, RADEON_STACK.format(name="Radeon RX 6800 XT", arch=", arch: gfx1030"))
    with pytest.raises(PlanError, match=r"state this Radeon's gfx target \(gpus\[\].arch\)"):
        plan(write_stack, RADEON_STACK.format(name="Radeon Mystery", arch=""))


V100_STACK = ("hardware:\n  gpus: [{{vendor: nvidia, name: Tesla V100, memory_gib: 32, bandwidth_gbs: 900, "
              "compute_capability: '7.0', tier: datacenter, memory_type: hbm}}]\n  memory_gib: 128\n"
              "  memory_bandwidth_gbs: 100\n  os: linux\n  cpu: {{cores: 16}}\n"
              "workload: {{concurrent_users: 8, optimize: throughput}}\nservices:\n  s: {{model: qwen2.5-7b-instruct, "
              "engine: vllm{version}}}\n")


def test_vllm_needs_turing_from_0_21_and_plans_a_v100_on_an_older_release(write_stack):
    """vLLM's installation docs say compute capability 7.5 or higher at v0.21.0 and on main (7.0 at v0.14.0): at the
    default version (0.33.0) or a stated 0.21+ a V100 is refused with the way out; a stack that names an older
    release plans it."""
    for version in ("", ", engine_version: 0.21.0"):
        with pytest.raises(PlanError, match=r"compute capability 7.5 \(Turing\) or newer from vLLM 0.21"):
            plan(write_stack, V100_STACK.format(version=version))
    sp, = plan(write_stack, V100_STACK.format(version=", engine_version: 0.10.2"))
    assert sp.engine == "vllm"
    auto, = plan(write_stack, V100_STACK.format(version="").replace(", engine: vllm", ""))
    assert auto.engine != "vllm" and "compute capability 7.5" in auto.rejected["vllm"]


def test_a_plan_says_when_its_engines_speed_line_has_no_point_on_its_gpus_vendor(write_stack):
    """vLLM's decode line is fitted on NVIDIA GPUs' public points only (speed.Backend.fitted_vendors; the fixture's AMD vLLM
    rows, confirm-vllm-rocm's, are held out and decided nothing): a vLLM plan on a Radeon says its forecast is an
    extrapolation; the same workload's vLLM plan on an NVIDIA GPU and llama.cpp's (a ROCm line of its own) on the
    Radeon do not."""
    from stackgen.plan import speed
    import yaml
    from pathlib import Path
    points = yaml.safe_load(Path(__file__).parents[1].joinpath("fixtures/public-logs/decode_speed.yaml").read_text())
    points = points["points"] if isinstance(points, dict) else points
    amd_words = ("radeon", "instinct", " mi3", " mi2", "rx ")
    for line in ("vllm", "sglang"):  # the lines say what they were fitted on
        assert speed.BACKENDS[line].fitted_vendors == {"nvidia"}
        amd = [p for p in points if p["backend"] == line and any(w in f" {p['gpu'].lower()}" for w in amd_words)]
        assert all(p.get("held_out") and p.get("corpus") == "confirm-vllm-rocm" for p in amd), [p["id"] for p in amd]
    radeon, = plan(write_stack, RADEON_STACK.format(name="Radeon RX 7900 XTX", arch=", arch: gfx1100"))
    note = [r for r in radeon.reasons if "public points only" in r]
    err = f"{speed.BACKENDS['vllm'].error:.0%}"
    assert note == ["decode: the vllm line is fitted on NVIDIA GPUs' public points only and not confirmed on AMD ones "
                    "(benchmarks/results/confirm-vllm-rocm-candidates.md), so the forecast for the Radeon RX 7900 XTX is "
                    f"an extrapolation and its stated +-{err} is not this GPU's (measure it: stackgen bench)"]
    nvidia, = plan(write_stack, V100_STACK.format(version=", engine_version: 0.10.2"))
    assert nvidia.engine == "vllm" and not any("public points only" in r for r in nvidia.reasons)
    llama, = plan(write_stack, RADEON_STACK.format(name="Radeon RX 7900 XTX", arch=", arch: gfx1100")
                  .replace("engine: vllm", "engine: llama.cpp"))
    assert not any("public points only" in r for r in llama.reasons)
