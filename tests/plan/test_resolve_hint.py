"""The "what to change" line of a refusal (resolve._try_hint), each offer and figure derived by hand: the fewer-users
offer, the local-file wording, which engine and quant it names when several engines fit a smaller quant, and the
"tried down to 1" lever. Every offer is checked by planning the stack with the change (it fits) and without it."""

from __future__ import annotations

import dataclasses

import pytest

from stackgen.plan import resolve
from stackgen.errors import PlanError
from stackgen.host.facts import HostFacts
from stackgen.spec.profiles import load_profiles
from stackgen.spec.stack import load_stack

HOST = HostFacts(hardware=None)  # type: ignore[arg-type]
CATALOG = load_profiles().models
GB = 1e9


def load(write_stack, body: str):
    return load_stack(write_stack("version: 1\n" + body))


def hint_of(stack) -> str:
    with pytest.raises(PlanError) as exc:
        resolve.resolve(stack, HOST)
    return str(exc.value).splitlines()[-1]


MLX_USERS = ("hardware: m4-16gb\nworkload: {{concurrent_users: {users}, context_tokens: 4096, prompt_tokens: 1000, "
             "output_tokens: 200}}\nservices:\n  chat: {{model: llama-3.1-8b-instruct, quant: 4bit, engine: mlx}}\n")


def test_hint_offers_fewer_users_when_only_fewer_users_fit(write_stack):
    """MLX pinned on a 16 GB M4, Llama 3.1 8B at 4bit (catalog: 4,516,698,112 bytes), 4096-token requests, 64 users.
    KV per user: 32 layers x 8 KV heads x (128 + 128) dims x 2 bytes (bf16) x 4096 tokens = 536,870,912 (512 MiB);
    the M4 gives the GPU at most 14.6 GB (the plan's host budget). 64 users need 4.52 + 64 x 0.537 GB > 14.6; the
    hint halves: 32 users 4.52 + 17.2 + overhead > 14.6 (refused), 16 users 4.52 + 8.59 + 0.54 = 13.64 GB fit. The
    context cannot help: at 2048 tokens (the floor; 1000 + 200 tokens still fit a request) 64 users hold 64 x 256 MiB
    = 17.2 GB of KV. The 3bit quant saves 27% of 4.5 GB, far from the 30 GB over. So the one offer is 16 users."""
    m = CATALOG["llama-3.1-8b-instruct"]
    per_user = m.layers * m.kv_heads * (m.head_dim_k + m.head_dim_v) * 2 * 4096
    assert per_user == 536_870_912
    line = hint_of(load(write_stack, MLX_USERS.format(users=64)))
    assert line == ("Each of these fits: `concurrent_users: 16` (MLX (mlx_lm.server) fits it). "
                    "Or a smaller model, or more memory.")
    fit = resolve.resolve(load(write_stack, MLX_USERS.format(users=16)), HOST).services[0].memory
    assert fit.parallel == 16 and fit.kv_cache_bytes == 16 * per_user and fit.weights_bytes == 4_516_698_112
    assert fit.total_bytes <= fit.host_budget_bytes
    with pytest.raises(PlanError) as exc:
        # 4,516,698,112 + 32 x 536,870,912 + the 512 MiB overhead = 22,233,438,208 bytes
        resolve.resolve(load(write_stack, MLX_USERS.format(users=32)), HOST)
    assert str(exc.value).splitlines()[0].endswith(  # a lone service: nothing held by earlier ones is added
        ": services.chat: engine mlx cannot serve llama-3.1-8b-instruct: needs 22.2 GB of unified memory; "
        "Apple M4 can give the GPU at most 14.6 GB")
    assert fit.total_bytes + 16 * per_user == 4_516_698_112 + 32 * per_user + 536_870_912 == 22_233_438_208


def test_hint_offers_one_user_and_a_shorter_context_together(write_stack):
    """Llama 3.1 8B at 8bit on MLX with 16 users of 32768 tokens: at 2048 tokens (halved four times; 1200 tokens
    of request still fit) 16 users hold 16 x 256 MiB = 4.3 GB of KV beside 8.5 GB of weights: fits; and one user at
    the full 32768 tokens (4 GiB of KV) fits too, while two (8 GiB) do not: the users loop halves 16 -> 8 -> 4 -> 2
    -> 1 and offers 1, after the context offer."""
    body = ("hardware: m4-16gb\nworkload: {concurrent_users: 16, context_tokens: 32768, prompt_tokens: 1000, "
            "output_tokens: 200}\nservices:\n  chat: {model: llama-3.1-8b-instruct, quant: 8bit, engine: mlx}\n")
    assert hint_of(load(write_stack, body)) == (
        "Each of these fits: `context_tokens: 2048` (MLX (mlx_lm.server) fits it); `concurrent_users: 1` "
        "(MLX (mlx_lm.server) fits it). Or a smaller model, or more memory.")
    resolve.resolve(load(write_stack, body.replace("concurrent_users: 16", "concurrent_users: 1")), HOST)
    with pytest.raises(PlanError):
        resolve.resolve(load(write_stack, body.replace("concurrent_users: 16", "concurrent_users: 2")), HOST)


def test_when_no_lever_alone_fits_the_hint_offers_the_least_they_give_up_together(write_stack):
    """Gemma 3 27B on MLX on a 16 GB M4 (14.6 GB for the GPU), 8 users of 16384 tokens: no lever alone fits (3bit
    weights are 12.0 GB, leaving 2.6 GB for 8 users' KV; one user at bf16 weights is still 15+ GB; 2048 tokens leave
    the 4bit weights' 15.2 GB). Together: the most users first (8 and 4 fit with nothing), then the largest quant,
    then the longest context: 2 users at 3bit with 4096 tokens. The offer plans (it fits), and each step less does
    not: 2 users at 8192, or 4 users at any context."""
    body = ("hardware: m4-16gb\nworkload: {{concurrent_users: {users}, context_tokens: {ctx}, prompt_tokens: 1000, "
            "output_tokens: 200}}\nservices:\n  chat: {{model: gemma-3-27b-it, engine: mlx{quant}}}\n")
    assert hint_of(load(write_stack, body.format(users=8, ctx=16384, quant=""))) == (
        "No one change fits; together these do: `quant: 3bit`, `context_tokens: 4096` and `concurrent_users: 2` "
        "(MLX (mlx_lm.server) fits it: 12.0 GB of weights). Or a smaller model, or more memory.")
    fit = resolve.resolve(load(write_stack, body.format(users=2, ctx=4096, quant=", quant: 3bit")), HOST)
    assert fit.services[0].memory.fits and fit.services[0].memory.parallel == 2
    for users, ctx in ((2, 8192), (4, 2048)):
        with pytest.raises(PlanError):
            resolve.resolve(load(write_stack, body.format(users=users, ctx=ctx, quant=", quant: 3bit")), HOST)


def test_two_users_that_never_fit_name_the_users_lever(write_stack):
    """Llama 3.1 70B on a 16 GB CPU laptop, 2 users of 2048 tokens: even Q2_K (70.6e9 x 3.35 / 8 = 29.6 GB) is twice
    the 14.6 GB usable, and one user does not help; 2048 tokens is the floor, so no context is tried. The levers
    tried are the two quants below Q4_K_M and one user."""
    body = ("hardware: cpu-laptop-16gb\nworkload: {concurrent_users: 2, context_tokens: 2048, prompt_tokens: 1000, "
            "output_tokens: 200}\nservices:\n  big: {model: llama-3.1-70b-instruct}\n")
    assert hint_of(load(write_stack, body)) == (
        "None of these makes it fit: a smaller quant (tried Q3_K_M, Q2_K); fewer concurrent users (tried down to 1). "
        "Pick a smaller model or a machine with more memory.")


def test_hint_names_the_engine_whose_smaller_quant_is_largest(write_stack):
    """Gemma 3 27B (27.43e9 parameters) on a 16 GB M4, any engine: llama.cpp and Ollama fit Q2_K (27.43e9 x 3.35 / 8
    = 11,486,312,500 bytes) but not Q3_K_M (13.4 GB); vLLM and SGLang need CUDA (no plan, skipped, not the end of
    the search); MLX fits 3bit (27.43e9 x 0.4375 = 12,000,625,000 bytes) below its 4bit (15.2 GB). The hint offers
    the largest quant that fits, MLX's 12.0 GB 3bit, over llama.cpp's 11.5 GB Q2_K (first in engine order)."""
    m = CATALOG["gemma-3-27b-it"]
    assert int(m.params * 0.4375) == 12_000_625_000 and int(m.params * 3.35 / 8) == 11_486_312_500
    body = ("hardware: m4-16gb\nworkload: {{concurrent_users: 1, context_tokens: 2048, prompt_tokens: 1000, "
            "output_tokens: 200}}\nservices:\n  big: {{model: gemma-3-27b-it{engine}}}\n")
    assert hint_of(load(write_stack, body.format(engine=""))) == (
        "Each of these fits: `quant: 3bit` (MLX (mlx_lm.server) fits it: 12.0 GB of weights instead of "
        f"{m.mlx_bytes('4bit')[0] / GB:.1f} GB). Or a smaller model, or more memory.")
    assert hint_of(load(write_stack, body.format(engine=", engine: llama.cpp"))) == (
        "Each of these fits: `quant: Q2_K` (llama.cpp (llama-server) fits it: 11.5 GB of weights instead of "
        f"{m.gguf_bytes('Q4_K_M')[0] / GB:.1f} GB). Or a smaller model, or more memory.")


def _as_local_file(stack, source: str, path: str):
    svc = stack.services[0]
    svc = dataclasses.replace(svc, model=dataclasses.replace(svc.model, source=source, path=path))
    return dataclasses.replace(stack, services=(svc,))


def test_hint_for_a_local_file_asks_for_another_file(write_stack):
    """`quant:` cannot change the quant of a local file, so for a local HF folder the hint asks for a file in the
    smaller quant. vLLM pinned on a 24 GB RTX 4090 with bf16 Llama 3.1 8B (16.1 GB) and four 131072-token users:
    fp8 (8.03e9 x 1.03 = 8.3 GB) fits, as does 65536 tokens (test_resolve_service pins the context search).
    A catalog model with the same facts gets `quant: fp8` instead."""
    body = ("hardware: rtx-4090\nworkload: {concurrent_users: 4, context_tokens: 131072}\nservices:\n"
            "  big: {model: llama-3.1-8b-instruct, quant: bf16, engine: vllm}\n")
    m = CATALOG["llama-3.1-8b-instruct"]
    fp8, bf16 = m.hf_bytes("fp8")[0] / GB, m.hf_bytes("bf16")[0] / GB
    assert f"{fp8:.1f}" == f"{m.params * 1.03 / GB:.1f}" == "8.3"
    tail = "; `context_tokens: 65536` (vLLM fits it). Or a smaller model, or more memory."
    assert hint_of(_as_local_file(load(write_stack, body), "hf", "/models/llama-8b")) == (
        f"Each of these fits: a fp8 file of this model (vLLM fits it: {fp8:.1f} GB of weights instead of {bf16:.1f} GB; "
        "`quant:` cannot change a file's own quant)" + tail)
    assert hint_of(load(write_stack, body)) == (
        f"Each of these fits: `quant: fp8` (vLLM fits it: {fp8:.1f} GB of weights instead of {bf16:.1f} GB)" + tail)
    # only a gguf/hf model with a path is a local file; a catalog model with a path keeps `quant:`
    assert "`quant: fp8`" in hint_of(_as_local_file(load(write_stack, body), "catalog", "/models/blob"))


def test_hint_for_a_local_gguf_offers_a_smaller_file_with_its_estimated_size(write_stack):
    """A local GGUF holds one quant: the hint plans a smaller quant of the same model at its size (catalog figure,
    or parameters x bits per weight), never at the 0 bytes a file has for a quant it does not hold (before the fix
    the hint offered "a Q3_K_M file ... 0.0 GB of weights"). Qwen2.5 32B Q4_K_M on the 16 GB laptop: Q3_K_M does
    not fit, Q2_K does (as for the catalog model, test_resolve_service.test_hint_lines)."""
    m = CATALOG["qwen2.5-32b-instruct"]
    q2, q4 = m.gguf_bytes("Q2_K")[0], m.gguf_bytes("Q4_K_M")[0]
    stack = _as_local_file(load(write_stack, "hardware: cpu-laptop-16gb\nservices:\n  big: {model: qwen2.5-32b-instruct, "
                                "quant: Q4_K_M}\n"), "gguf", "/models/qwen2.5-32b-Q4_K_M.gguf")
    assert hint_of(stack) == (
        f"Each of these fits: a Q2_K file of this model (llama.cpp (llama-server) fits it at 4096 tokens per "
        f"request, not 16384: {q2 / GB:.1f} GB of "
        f"weights instead of {q4 / GB:.1f} GB; `quant:` cannot change a file's own quant). "
        "Or a smaller model, or more memory.")


def test_hint_stops_at_one_user(write_stack):
    """Llama 3.1 8B 4bit on MLX, a 16 GB M4, 2 users of 131072 tokens: KV 131072 B per token (32 layers x 8 heads x
    256 dims x 2 bytes), 17.2 GB for one user alone, more than the 14.6 GB the GPU may use: not 2 users, not 1. At
    32768 tokens 2 users need 8.6 GB of KV + 4.5 GB of weights: that is the offer. Fewer users is no lever here; the
    search stops at one user (zero users would "fit", weights only, and be offered as `concurrent_users: 0`)."""
    stack = load(write_stack, "hardware: m4-16gb\nworkload: {concurrent_users: 2, context_tokens: 131072, "
                 "prompt_tokens: 1000, output_tokens: 200}\nservices:\n"
                 "  s: {model: llama-3.1-8b-instruct, quant: 4bit, engine: mlx}\n")
    assert hint_of(stack) == ("Each of these fits: `context_tokens: 32768` (MLX (mlx_lm.server) fits it). Or a "
                              "smaller model, or more memory.")


@pytest.mark.parametrize("context, prompt, output, down_to", [
    # prompt + output = 4096: a 4096-token context still holds a request, 2048 does not
    (16384, 3000, 1096, 4096),
    # 4098 halves to 2049, then to the 2048 floor (2049 is still above it)
    (4098, 1000, 48, 2048),
])
def test_the_shortest_context_tried_is_said(write_stack, context, prompt, output, down_to):
    """Llama 3.1 70B 4bit (about 40 GB) never fits the 14.6 GB an M4 gives its GPU: the refusal names each lever
    tried: 3bit, the only smaller MLX quant, and the shortest context tried, which stops where a request (prompt +
    output) no longer fits the context or at the 2048-token floor."""
    stack = load(write_stack, f"hardware: m4-16gb\nworkload: {{concurrent_users: 1, context_tokens: {context}, "
                 f"prompt_tokens: {prompt}, output_tokens: {output}}}\nservices:\n"
                 "  s: {model: llama-3.1-70b-instruct, quant: 4bit, engine: mlx}\n")
    assert hint_of(stack) == (f"None of these makes it fit: a smaller quant (tried 3bit); a shorter context (tried down "
                              f"to {down_to} tokens). Pick a smaller model or a machine with more memory.")


def big_hf_folder(root, params: int, **config):
    """A Llama-70B-shaped HF folder (80 layers, 8 KV heads of 128; `config` changes config.json, a None value drops
    the key) whose one bf16 tensor holds `params` weights: the safetensors file is sparse (its header says the size;
    the data is a hole), so the test writes a few bytes."""
    import json
    import struct

    root.mkdir()
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 8192,
           "intermediate_size": 28672, "num_hidden_layers": 80, "num_attention_heads": 64, "num_key_value_heads": 8,
           "head_dim": 128, "vocab_size": 128256, "max_position_embeddings": 131072, "torch_dtype": "bfloat16",
           "rope_theta": 500000.0, **config}
    (root / "config.json").write_text(json.dumps({k: v for k, v in cfg.items() if v is not None}))
    header = json.dumps({"w": {"dtype": "BF16", "shape": [params], "data_offsets": [0, 2 * params]}}).encode()
    with open(root / "model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header)
        f.truncate(8 + len(header) + 2 * params)
    return root


def test_hint_looks_past_engines_that_cannot_load_the_model(write_stack, tmp_path):
    """A 33e9-parameter bf16 HF folder (66.0 GB) for one user of 131072 tokens on an 80 GB A100: no engine fits.
    llama.cpp and Ollama cannot load an HF folder (no memory plan) and come first in the engine order; the hint
    looks past them to vLLM: an fp8 file of the model, or 32768 tokens, fit vLLM."""
    folder = big_hf_folder(tmp_path / "hf", 33 * 10**9)
    stack = load(write_stack, f"hardware: a100-80gb\nserve: {{api_key_env: K}}\nworkload: {{concurrent_users: 1, "
                 f"context_tokens: 131072}}\nservices:\n  s: {{model: {folder}}}\n")
    assert hint_of(stack) == (
        "Each of these fits: a fp8 file of this model (vLLM fits it: 34.0 GB of weights instead of 66.0 GB; `quant:` "
        "cannot change a file's own quant); `context_tokens: 32768` (vLLM fits it). Or a smaller model, or more "
        "memory.")


def test_a_lever_that_fits_only_by_cutting_the_context_says_so(write_stack):
    """8 users of a 32B Q2_K at 32k on a 16 GB laptop: `concurrent_users: 2` was offered as a fit, and applied it
    planned 2 x 2048 tokens ("context reduced from 32768"), which the hint never said; it now says the context."""
    f = write_stack("version: 1\nhardware: cpu-laptop-16gb\nworkload: {concurrent_users: 8, context_tokens: 32768, "
                    "optimize: throughput}\nservices:\n  chat: {model: qwen2.5-32b-instruct, quant: Q2_K}\n")
    with pytest.raises(PlanError) as err:
        resolve.resolve(load_stack(f), HostFacts(hardware=None))
    hint = str(err.value).splitlines()[-1]
    two = write_stack("version: 1\nhardware: cpu-laptop-16gb\nworkload: {concurrent_users: 2, context_tokens: 32768, "
                      "optimize: throughput}\nservices:\n  chat: {model: qwen2.5-32b-instruct, quant: Q2_K}\n")
    sp = resolve.resolve(load_stack(two), HostFacts(hardware=None)).services[0]
    cut = sp.memory.context_per_request
    assert cut < 32768 and any("context reduced" in lv for lv in sp.memory.levers)
    assert f"`concurrent_users: 2` (llama.cpp (llama-server) fits it at {cut} tokens per request, not 32768)" in hint
