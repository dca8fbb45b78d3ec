"""How a local GGUF is sized and described for the planner: split files, files without general.file_type, quant
types outside the common few, recurrent and hybrid layers, and headers that cannot be planned (audit a1, #1 #3 #5 #9
#14). Files are written with gguf-py's GGUFWriter (test_remote.write_llama_gguf) or the synthetic writer of
test_gguf (make_gguf), as the other model tests do."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_remote import write_llama_gguf

from stackgen.models import gguf as sg_gguf
from stackgen.plan.resolve import resolve
from stackgen.spec.stack import SpecError, load_stack


def stack_text(model: str, extra: str = "", hardware: str = "cpu-server-64gb", engine: str = "") -> str:
    eng = f"    engine: {engine}\n" if engine else ""
    return (f"version: 1\nhardware: {hardware}\nworkload: {{concurrent_users: 2, context_tokens: 4096}}\n"
            f"services:\n  chat:\n    model: {model}\n{eng}{extra}")


def plan_of(path: Path):
    return resolve(load_stack(path), None).services[0]


# ---------------------------------------------------------------------------------------------- #1 split files


def test_a_local_split_gguf_is_sized_from_every_part(tmp_path, write_stack):
    """Was: the first part only (the audit's 70B Q4_K_M split planned 19.84 GB of 39.96 GB and ran out of memory)."""
    parts = write_llama_gguf(tmp_path, "m.gguf", split_max_tensors=1)
    assert [p.name for p in parts] == [f"m-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    headers = [sg_gguf.read_gguf_header(p) for p in parts]
    sp = plan_of(write_stack(stack_text(parts[0].name)))
    assert sp.memory.weights_bytes == sum(h.tensor_data_bytes for h in headers)
    assert sp.memory.weights_bytes > headers[0].tensor_data_bytes
    assert sp.model.params == sum(h.n_elements for h in headers)


def test_a_later_part_or_a_missing_part_of_a_split_is_refused_at_the_models_line(tmp_path, write_stack):
    parts = write_llama_gguf(tmp_path, "m.gguf", split_max_tensors=1)
    with pytest.raises(SpecError) as err:
        load_stack(write_stack(stack_text(parts[1].name)))
    text = str(err.value)
    assert ":6:12: services.chat.model:" in text and "part 2 of 3" in text and "m-00001-of-00003.gguf" in text
    parts[2].unlink()
    with pytest.raises(SpecError) as err:
        load_stack(write_stack(stack_text(parts[0].name)))
    assert "m-00003-of-00003.gguf" in str(err.value) and "services.chat.model" in str(err.value)


# ---------------------------------------------------------------------------------------------- #5 no general.file_type


def test_a_gguf_without_file_type_is_sized_from_its_tensors_and_named_by_their_type(tmp_path, write_stack):
    """Was: quant None, so the plan sized a Q4_K_M estimate from the parameter count (the audit's 16.06 GB F16 8B
    planned as 4.91 GB 'estimate') and ignored the stack's quant:. llama.cpp names such a file by its tensors'
    most common type (src/llama-model-loader.cpp) and loads what is there."""
    [path] = write_llama_gguf(tmp_path, "noft.gguf", file_type=None)
    header = sg_gguf.read_gguf_header(path)
    assert "general.file_type" not in header.metadata and set(header.tensor_types) == {"F32"}
    sp = plan_of(write_stack(stack_text(path.name)))
    assert sp.memory.weights_format == "F32" and sp.model.quant == "F32"
    assert sp.memory.weights_bytes == header.tensor_data_bytes and sp.memory.weights_source == "file"
    with pytest.raises(SpecError) as err:
        load_stack(write_stack(stack_text(path.name, "    quant: Q8_0\n")))
    assert "services.chat.quant" in str(err.value) and "which is F32" in str(err.value)
    assert "no general.file_type" in str(err.value)


def test_the_guess_is_llama_cpps_most_common_tensor_type(tmp_path):
    from test_gguf import ARR, I32, STR, U32, make_gguf

    kvs = [("general.architecture", STR, "llama"), ("llama.block_count", U32, 2), ("llama.embedding_length", U32, 256),
           ("llama.attention.head_count", U32, 4), ("llama.attention.head_count_kv", ARR, (I32, [4, 4]))]
    tensors = [("token_embd.weight", [256, 8], "Q6_K"), ("output_norm.weight", [256], "F32")]
    for i in range(2):
        tensors += [(f"blk.{i}.attn_norm.weight", [256], "F32"), (f"blk.{i}.attn_q.weight", [256, 256], "Q4_K"),
                    (f"blk.{i}.attn_k.weight", [256, 256], "Q4_K"), (f"blk.{i}.ffn_down.weight", [256, 256], "Q6_K")]
    data, _ = make_gguf(kvs, tensors)
    p = tmp_path / "m.gguf"
    p.write_bytes(data)
    s = sg_gguf.summarize_parts([sg_gguf.read_gguf_header(p)])
    assert (s["quant"], s["quant_guessed"]) == ("Q4_K_M", True)  # 4 Q4_K, 3 Q6_K, 3 F32: Q4_K is llama.cpp's Q4_K_M
    # A tie goes to the type that reaches the count first in tensor-name order (llama.cpp walks a std::map).
    tie = [("a.weight", [32], "Q8_0"), ("b.weight", [32], "F16")]
    assert sg_gguf.guess_file_type([sg_gguf.TensorInfo(n, t, tuple(sh), 0, 0) for n, sh, t in tie]) == "Q8_0"


def test_a_remote_gguf_without_file_type_is_named_and_sized_the_same_way(tmp_path):
    from test_remote import client
    from tools.hub_server import Hub, HubServer, OnDisk, Repo

    from stackgen.models.hub import resolve_remote

    [path] = write_llama_gguf(tmp_path, "m.gguf", file_type=None)
    with HubServer(Hub(repos={"org/m": Repo({"m.gguf": OnDisk(path)})})) as url:
        r = resolve_remote(f"{url}/org/m/resolve/main/m.gguf", None, client(url))
    assert r.fmt == "F32" and r.weights_bytes == sg_gguf.read_gguf_header(path).tensor_data_bytes


# ---------------------------------------------------------------------------------------------- #3 every GGUF type


def _typed_gguf(tmp_path: Path, file_type: int, tensor_type: str, name: str = "m.gguf") -> Path:
    """A small llama GGUF whose header says `file_type` and whose layer tensors are `tensor_type`."""
    from test_gguf import STR, U32, make_gguf

    kvs = [("general.architecture", STR, "llama"), ("general.file_type", U32, file_type),
           ("llama.block_count", U32, 2), ("llama.embedding_length", U32, 256), ("llama.feed_forward_length", U32, 512),
           ("llama.attention.head_count", U32, 4), ("llama.attention.head_count_kv", U32, 2),
           ("llama.context_length", U32, 4096)]
    tensors = [("token_embd.weight", [256, 64], "Q8_0"), ("output_norm.weight", [256], "F32")]
    for i in range(2):
        tensors += [(f"blk.{i}.attn_q.weight", [256, 256], tensor_type), (f"blk.{i}.ffn_up.weight", [256, 512], tensor_type)]
    data, _ = make_gguf(kvs, tensors)
    p = tmp_path / name
    p.write_bytes(data)
    return p


# llama_ftype -> its tensors' ggml type (llama.h; llama-quant.cpp's default type per ftype)
FTYPES = {19: ("IQ2_XXS", "IQ2_XXS"), 21: ("Q2_K_S", "Q2_K"), 23: ("IQ3_XXS", "IQ3_XXS"), 24: ("IQ1_S", "IQ1_S"),
          26: ("IQ3_S", "IQ3_S"), 28: ("IQ2_S", "IQ2_S"), 38: ("MXFP4_MOE", "MXFP4"), 39: ("NVFP4", "NVFP4"),
          40: ("Q1_0", "Q1_0"), 4: ("Q4_1_SOME_F16", "Q4_1")}


@pytest.mark.parametrize("ftype", sorted(FTYPES))
def test_a_local_gguf_of_any_type_is_planned_at_its_measured_size_without_a_substitution(ftype, tmp_path, write_stack):
    """Was: a type outside GGUF_BPW was planned as a Q4_K_M estimate with the warning '<type> is not a GGUF type;
    llama.cpp would load the nearest GGUF, Q4_K_M' (the audit's 14.82 GB IQ1_S 70B: '43.13 GB estimate', 44/80
    layers on a 24 GB GPU). llama.cpp loads the file as it is."""
    name, tensor_type = FTYPES[ftype]
    path = _typed_gguf(tmp_path, ftype, tensor_type)
    sp = plan_of(write_stack(stack_text(path.name, engine="llama.cpp")))
    assert sp.memory.weights_format == name
    assert (sp.memory.weights_bytes, sp.memory.weights_source) == (sg_gguf.read_gguf_header(path).tensor_data_bytes,
                                                                   "file")
    assert not [w for w in sp.warnings if "not a GGUF type" in w]


@pytest.mark.parametrize("ftype", [19, 21, 23, 24, 26, 28, 38, 39, 40])
def test_the_files_type_is_a_quant_the_stack_may_write(ftype, tmp_path, write_stack):
    """Was: `quant: IQ1_S` on an IQ1_S file was 'unknown quant' after the mismatch hint had said to write it."""
    name, tensor_type = FTYPES[ftype]
    path = _typed_gguf(tmp_path, ftype, tensor_type)
    with pytest.raises(SpecError) as err:
        load_stack(write_stack(stack_text(path.name, "    quant: Q8_0\n")))
    assert f"write `quant: {name}`" in str(err.value)
    assert plan_of(write_stack(stack_text(path.name, f"    quant: {name}\n"))).memory.weights_format == name


def test_a_type_without_a_quant_spelling_is_not_offered_as_one(tmp_path, write_stack):
    path = _typed_gguf(tmp_path, 4, "Q4_1")  # LLAMA_FTYPE_MOSTLY_Q4_1_SOME_F16: no quant: names it
    with pytest.raises(SpecError) as err:
        load_stack(write_stack(stack_text(path.name, "    quant: Q8_0\n")))
    assert "remove `quant:`" in str(err.value) and "write `quant:" not in str(err.value)


def test_new_types_estimate_in_the_order_of_their_sizes():
    """Catalog and non-file plans estimate from GGUF_BPW: each added type sits between its neighbours."""
    from stackgen.models.facts import GGUF_BPW

    order = ["Q1_0", "IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ3_XXS", "IQ3_XS", "IQ3_S", "IQ3_M"]
    assert [GGUF_BPW[q] for q in order] == sorted(GGUF_BPW[q] for q in order)
    assert GGUF_BPW["MXFP4_MOE"] == GGUF_BPW["MXFP4"] and GGUF_BPW["Q2_K_S"] == GGUF_BPW["Q2_K"]


def test_a_locked_remote_gguf_of_a_new_type_is_planned_from_its_header(tmp_path, write_stack, monkeypatch):
    """Was: hf:org/big-GGUF locked with gguf_sizes {IQ1_S: 14822227968} still planned '43.13 GB estimate'."""
    from test_remote import client
    from tools.hub_server import Hub, HubServer, OnDisk, Repo

    from stackgen.models.hub import resolve_remote
    from stackgen.models.lock import entry_from_resolved, facts_from_resolved, lock_path_for, write_lock

    [path] = write_llama_gguf(tmp_path, "m-IQ1_S.gguf", file_type=24)
    ref = "hf:org/m-GGUF"
    with HubServer(Hub(repos={"org/m-GGUF": Repo({path.name: OnDisk(path)})})) as url:
        r = resolve_remote(ref, None, client(url))
    entry = entry_from_resolved(ref, None, r, facts_from_resolved(ref, None, r))
    stack = write_stack(stack_text(ref, engine="llama.cpp"))
    write_lock(lock_path_for(stack), {entry.key: entry})
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    sp = plan_of(stack)
    assert r.fmt == "IQ1_S" and sp.memory.weights_format == "IQ1_S"
    assert (sp.memory.weights_bytes, sp.memory.weights_source) == (r.weights_bytes, "header")


# ---------------------------------------------------------------------------------------------- #9 recurrent and hybrid


def _arch_gguf(tmp_path: Path, arch: str, layers: int, keys: list, name: str = "m.gguf") -> Path:
    from test_gguf import STR, U32, make_gguf

    kvs = [("general.architecture", STR, arch), ("general.file_type", U32, 1), (f"{arch}.block_count", U32, layers),
           (f"{arch}.embedding_length", U32, 256), (f"{arch}.context_length", U32, 8192)]
    kvs += [(f"{arch}.{k}", t, v) for k, t, v in keys]
    tensors = [("token_embd.weight", [256, 64], "F16")]
    tensors += [(f"blk.{i}.ffn_up.weight", [256, 256], "F16") for i in range(layers)]
    data, _ = make_gguf(kvs, tensors)
    p = tmp_path / name
    p.write_bytes(data)
    return p


def _attention_kv(sp, kv_heads: list[int], head_dim: int) -> int:
    """engines.md 1.4: sum over layers of n_head_kv(il) x (head_k + head_v) x 2 B (f16) x pad256(cells) per slot."""
    m = sp.memory
    assert m.kv_cache_type == "f16"
    cells = -(-m.context_per_request // 256) * 256
    return sum(kv_heads) * 2 * head_dim * 2 * cells * m.parallel


def test_a_mamba_gguf_has_a_fixed_state_per_sequence_not_attention_kv(tmp_path, write_stack):
    """Was: heads invented as 1 with head_dim = hidden, attention KV on every layer (the audit's 64-layer Mamba:
    5.37 GB of KV for 2 x 4096 tokens where llama.cpp keeps 50 MB of state)."""
    from test_gguf import U32

    layers, d_conv, d_inner, d_state = 4, 4, 512, 16
    path = _arch_gguf(tmp_path, "mamba", layers, [("attention.head_count", U32, 0), ("ssm.conv_kernel", U32, d_conv),
                                                   ("ssm.inner_size", U32, d_inner), ("ssm.state_size", U32, d_state),
                                                   ("ssm.time_step_rank", U32, 16)])
    sp = plan_of(write_stack(stack_text(path.name, engine="llama.cpp")))
    per_layer = ((d_conv - 1) * d_inner + d_state * d_inner) * 4  # engines.md 2.5, n_group 0
    assert sp.model.kv_heads == 0 and sp.model.recurrent_layers == layers
    assert sp.memory.kv_cache_bytes == layers * per_layer * sp.memory.parallel
    # The state does not grow with the context.
    longer = plan_of(write_stack(stack_text(path.name, engine="llama.cpp").replace("4096", "8192"), "b.yaml"))
    assert longer.memory.kv_cache_bytes == sp.memory.kv_cache_bytes


def test_a_per_layer_head_count_kv_counts_only_the_layers_with_heads(tmp_path, write_stack):
    """Was: every layer at the largest count (the audit's [8, 0, 0, 8]: 33,554,432 B, twice llama.cpp's sum)."""
    from test_gguf import ARR, I32, U32

    heads = [("attention.head_count", U32, 8)]
    mixed = _arch_gguf(tmp_path, "llama", 4, heads + [("attention.head_count_kv", ARR, (I32, [8, 0, 0, 8]))], "a.gguf")
    full = _arch_gguf(tmp_path, "llama", 4, heads + [("attention.head_count_kv", U32, 8)], "b.gguf")
    sp = plan_of(write_stack(stack_text(mixed.name, engine="llama.cpp"), "a.yaml"))
    sp_full = plan_of(write_stack(stack_text(full.name, engine="llama.cpp"), "b.yaml"))
    assert sp.memory.kv_cache_bytes == _attention_kv(sp, [8, 0, 0, 8], 256 // 8)
    assert 2 * sp.memory.kv_cache_bytes == sp_full.memory.kv_cache_bytes == _attention_kv(sp_full, [8] * 4, 256 // 8)


def test_a_hybrid_counts_attention_kv_on_its_attention_layers_and_state_on_the_others(tmp_path, write_stack):
    """LFM2 (short convolutions where head_count_kv is 0) and a Qwen3-Next style model (attention every
    full_attention_interval-th layer, a scalar head_count_kv)."""
    from test_gguf import ARR, I32, U32

    lfm = _arch_gguf(tmp_path, "lfm2", 4, [("attention.head_count", U32, 8), ("shortconv.l_cache", U32, 3),
                                           ("attention.head_count_kv", ARR, (I32, [0, 0, 2, 0]))], "lfm.gguf")
    sp = plan_of(write_stack(stack_text(lfm.name, engine="llama.cpp"), "lfm.yaml"))
    state = 3 * 256 * (3 - 1) * 4  # three recurrent layers of n_embd x (l_cache - 1) f32 (llama-hparams n_embd_r)
    assert sp.memory.kv_cache_bytes == _attention_kv(sp, [0, 0, 2, 0], 32) + state * sp.memory.parallel

    nxt = _arch_gguf(tmp_path, "qwen3next", 8, [("attention.head_count", U32, 8), ("attention.head_count_kv", U32, 2),
                                                ("full_attention_interval", U32, 4), ("ssm.conv_kernel", U32, 4),
                                                ("ssm.inner_size", U32, 512), ("ssm.state_size", U32, 16),
                                                ("ssm.group_count", U32, 2)], "next.gguf")
    sp = plan_of(write_stack(stack_text(nxt.name, engine="llama.cpp"), "next.yaml"))
    per_layer = (3 * (512 + 2 * 2 * 16) + 16 * 512) * 4
    assert sp.model.recurrent_layers == 6 and sp.model.kv_heads_per_layer == (0, 0, 0, 2, 0, 0, 0, 2)
    assert sp.memory.kv_cache_bytes == _attention_kv(sp, [2, 2], 32) + 6 * per_layer * sp.memory.parallel


def test_a_hybrids_layers_survive_the_lock_and_other_locks_stay_as_written(tmp_path):
    from test_gguf import ARR, I32, U32

    from stackgen.models.facts import ModelFacts
    from stackgen.models.lock import LockEntry, facts_to_json

    path = _arch_gguf(tmp_path, "lfm2", 4, [("attention.head_count", U32, 8), ("shortconv.l_cache", U32, 3),
                                            ("attention.head_count_kv", ARR, (I32, [0, 0, 2, 0]))])
    s = sg_gguf.summarize_parts([sg_gguf.read_gguf_header(path)])
    facts = ModelFacts.from_summary("m", "gguf", None, s)
    back = LockEntry("hf:org/m", None, {}, facts_to_json(facts)).model_facts()
    assert back == facts and back.kv_heads_per_layer == (0, 0, 2, 0) and back.recurrent_state_bytes > 0
    plain = facts_to_json(ModelFacts.from_summary("m", "gguf", None, {**s, "attention_kv_heads_per_layer": None,
                                                                    "recurrent_layers": 0, "recurrent_state_bytes": 0}))
    assert not {"kv_heads_per_layer", "recurrent_layers", "recurrent_state_bytes"} & set(plain)


def test_ollamas_estimate_reads_the_per_layer_heads_and_the_recurrent_state():
    """Ollama's legacy estimate (engines.md 2.5): per-layer KV x n_head_kv(layer), recurrent layers their state."""
    from stackgen.engines.ollama_estimate import OllamaModel, kv_per_layer

    base = dict(architecture="lfm2", block_count=4, embedding=256, heads=8, kv_heads=2, head_k=32, head_v=32,
                vocab=1000, layer_bytes=1, output_bytes=1)
    kv = kv_per_layer(OllamaModel(**base, kv_heads_per_layer=(0, 0, 2, 0), recurrent_state_bytes=4000), 4096, 512, 2,
                      "f16")
    one = 4096 * 2 * 64 * 2 * 2  # num_ctx x parallel x (head_k + head_v) x 2 heads x 2 B
    assert kv == [1000, 1000, one + 1000, 1000]


# ---------------------------------------------------------------------------------------------- #14 unplannable headers


@pytest.mark.parametrize("keys, words", [
    ([], "attention.head_count is missing"),
    ([("attention.head_count", 0), ("attention.head_count_kv", 0)], "attention.head_count is 0"),
    ([("attention.head_count", 8), ("attention.head_count_kv", 0)], "head_count_kv is 0 on every layer"),
    ([("attention.head_count", 8), ("attention.head_count_kv", 64)], "head_count_kv (64) does not divide"),
    ([("attention.head_count", 7), ("attention.head_count_kv", 3)], "head_count_kv (3) does not divide"),
])
def test_head_counts_that_cannot_be_planned_are_refused_at_the_models_line(keys, words, tmp_path, write_stack):
    """Was: planned silently with heads set to 1 and head_dim = hidden, or with 64 KV heads for 8 query heads."""
    from test_gguf import U32

    path = _arch_gguf(tmp_path, "llama", 4, [(k, U32, v) for k, v in keys])
    with pytest.raises(SpecError) as err:
        load_stack(write_stack(stack_text(path.name)))
    text = str(err.value)
    assert ":6:12: services.chat.model: m.gguf: llama." in text and words in text
    assert "(re-convert the model with llama.cpp's convert_hf_to_gguf.py" in text and "Traceback" not in text


def test_a_vocabulary_only_gguf_is_refused(tmp_path, write_stack):
    """Was: planned with 0 bytes of weights and 'TTFT inf s alone' (llama.cpp's ggml-vocab-*.gguf files)."""
    from test_gguf import STR, U32, make_gguf

    kvs = [("general.architecture", STR, "llama"), ("llama.block_count", U32, 4), ("llama.embedding_length", U32, 256),
           ("llama.attention.head_count", U32, 8), ("tokenizer.ggml.model", STR, "llama")]
    data, _ = make_gguf(kvs, [])
    (tmp_path / "vocab.gguf").write_bytes(data)
    with pytest.raises(SpecError) as err:
        load_stack(write_stack(stack_text("vocab.gguf")))
    assert "services.chat.model: vocab.gguf: the file has no tensors" in str(err.value)


def test_a_hybrid_with_zero_kv_layers_and_a_recurrent_model_without_heads_still_plan(tmp_path, write_stack):
    from test_gguf import ARR, I32, U32

    hybrid = _arch_gguf(tmp_path, "llama", 4, [("attention.head_count", U32, 8),
                                               ("attention.head_count_kv", ARR, (I32, [8, 0, 0, 2]))], "h.gguf")
    mamba = _arch_gguf(tmp_path, "mamba", 4, [("ssm.conv_kernel", U32, 4), ("ssm.inner_size", U32, 512),
                                              ("ssm.state_size", U32, 16)], "r.gguf")
    assert plan_of(write_stack(stack_text(hybrid.name), "h.yaml")).memory.fits
    assert plan_of(write_stack(stack_text(mamba.name), "r.yaml")).memory.kv_cache_bytes > 0


def test_an_mla_gguf_caches_k_only_as_llama_cpp_does(tmp_path, write_stack):
    """DeepSeek V2/V3 GGUFs converted with multi-head latent attention (attention.key_length_mla and
    value_length_mla set: llama_hparams::is_mla()) hold one KV head of key_length = kv_lora_rank + rope dims (576) and
    llama.cpp allocates K only (src/llama-kv-cache.cpp: has_v = !is_mla; V is a view of K). The plan counted
    576 + 512 per token per layer, 1.9x. An older conversion without the _mla keys runs the full heads (no change)."""
    from test_gguf import U32

    layers = 4
    mla = [("attention.head_count", U32, 16), ("attention.head_count_kv", U32, 1),
           ("attention.key_length", U32, 576), ("attention.value_length", U32, 512),
           ("attention.key_length_mla", U32, 192), ("attention.value_length_mla", U32, 128),
           ("attention.kv_lora_rank", U32, 512)]
    new = _arch_gguf(tmp_path, "deepseek2", layers, mla, "new.gguf")
    old = _arch_gguf(tmp_path, "deepseek2", layers, [("attention.head_count", U32, 16),
                                                     ("attention.head_count_kv", U32, 16),
                                                     ("attention.key_length", U32, 192),
                                                     ("attention.value_length", U32, 128)], "old.gguf")
    sp = plan_of(write_stack(stack_text(new.name, engine="llama.cpp"), "a.yaml"))
    sp_old = plan_of(write_stack(stack_text(old.name, engine="llama.cpp"), "b.yaml"))
    m = sp.memory
    assert m.kv_cache_type == "f16" and sp.model.kv_k_only and not sp_old.model.kv_k_only
    cells = -(-m.context_per_request // 256) * 256
    assert m.kv_cache_bytes == layers * 576 * 2 * cells * m.parallel
    assert sp_old.memory.kv_cache_bytes == layers * 16 * (192 + 128) * 2 * cells * sp_old.memory.parallel
    # a lock keeps it; other models' locks stay as written (no kv_k_only key)
    from stackgen.models.lock import facts_to_json
    assert facts_to_json(sp.model)["kv_k_only"] is True and "kv_k_only" not in facts_to_json(sp_old.model)
