"""Remote models: GGUF headers and safetensors headers read by HTTP range requests from a local Hub/registry stand-in
(tests/tools/hub_server.py on 127.0.0.1), pinned in stack.lock, planned offline from the lock."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest
from tools.hub_server import Hub, HubServer, OnDisk, Repo, recorded_repo

from stackgen.models import gguf as sg_gguf
from stackgen.models import hf as hfmodel
from stackgen.models.hub import resolve_remote
from stackgen.models.lock import dump_lock, lock_path_for, read_lock
from stackgen.models.remote import HttpClient, RemoteError
from stackgen.plan.resolve import resolve
from stackgen.spec.stack import SpecError, load_stack

SHA2 = "fedcba9876543210fedcba9876543210fedcba98"


def write_llama_gguf(folder: Path, name: str, *, file_type: int | None = 15, split_max_tensors: int = 0,
                     big: int = 1024) -> list[Path]:
    """A real GGUF written by gguf-py's GGUFWriter (the writer llama.cpp's converter uses): a small header and a
    `big` x 1024 F32 tensor (4 MiB at the default) behind it; split into parts when split_max_tensors is set; no
    general.file_type key when file_type is None."""
    import gguf

    cwd = os.getcwd()
    os.chdir(folder)
    try:
        w = gguf.GGUFWriter(name, "llama", split_max_tensors=split_max_tensors)
        w.add_block_count(2)
        w.add_embedding_length(64)
        w.add_feed_forward_length(128)
        w.add_head_count(4)
        w.add_head_count_kv(2)
        w.add_context_length(4096)
        if file_type is not None:
            w.add_file_type(file_type)
        w.add_tensor("token_embd.weight", np.zeros((big, 1024), dtype=np.float32))
        for i in range(2):
            w.add_tensor(f"blk.{i}.attn_q.weight", np.zeros((64, 64), dtype=np.float32))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    finally:
        os.chdir(cwd)
    stem = name.removesuffix(".gguf")
    return sorted(folder.glob(f"{stem}*.gguf"))


def client(url: str, **env: str) -> HttpClient:
    return HttpClient(env={"HF_ENDPOINT": url, "STACKGEN_OLLAMA_REGISTRY": url, **env}, sleep=lambda s: None)


def stack_text(model: str, extra: str = "", hardware: str = "cpu-server-64gb") -> str:
    return f"version: 1\nhardware: {hardware}\nservices:\n  chat:\n    model: {model}\n{extra}"


@pytest.fixture
def env_hub(monkeypatch):
    """Start a hub and point the process's HF_ENDPOINT / Ollama registry at it (what the CLI reads)."""
    servers = []

    def start(hub: Hub) -> str:
        s = HubServer(hub)
        url = s.__enter__()
        servers.append(s)
        monkeypatch.setenv("HF_ENDPOINT", url)
        monkeypatch.setenv("STACKGEN_OLLAMA_REGISTRY", url)
        for name in ("HF_HUB_OFFLINE", "STACKGEN_OFFLINE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
            monkeypatch.delenv(name, raising=False)
        return url

    yield start
    for s in servers:
        s.__exit__(None, None, None)


# ---------------------------------------------------------------------------------------------- GGUF by range


def test_gguf_url_reads_the_header_not_the_file(tmp_path):
    [path] = write_llama_gguf(tmp_path, "m.gguf", big=4096)  # 16 MiB of tensor data
    hub = Hub(repos={"org/m": Repo({"m.gguf": OnDisk(path)})})
    with HubServer(hub) as url:
        c = client(url)
        r = resolve_remote(f"{url}/org/m/resolve/main/m.gguf", None, c)
    local = sg_gguf.summarize(sg_gguf.read_gguf_header(path))
    assert r.summary["layers"] == local["layers"] == 2 and r.summary["kv_heads"] == 2
    assert r.weights_bytes == local["tensor_data_bytes"] and r.fmt == "Q4_K_M"
    size = path.stat().st_size
    assert size > 16 << 20
    # One 1 MiB block covers this header: bytes on the wire are that block, not the 16 MiB file.
    assert hub.bytes_sent <= (1 << 20) and c.bytes_received == hub.bytes_sent
    assert all(e["range"] for e in hub.log)


def test_hf_gguf_repo_picks_the_quant_and_reads_every_split_part(tmp_path):
    parts = write_llama_gguf(tmp_path, "tiny-Q8_0.gguf", file_type=7, split_max_tensors=1)
    [other] = write_llama_gguf(tmp_path, "tiny-Q4_K_M.gguf", big=8)
    assert [p.name for p in parts] == [f"tiny-Q8_0-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    files = {p.name: OnDisk(p) for p in parts} | {other.name: OnDisk(other), "mmproj-tiny-f16.gguf": b"x"}
    hub = Hub(repos={"org/tiny-GGUF": Repo(files)})
    with HubServer(hub) as url:
        r = resolve_remote("hf:org/tiny-GGUF:Q8_0", None, client(url))
        default = resolve_remote("hf:org/tiny-GGUF", None, client(url))
    headers = [sg_gguf.read_gguf_header(p) for p in parts]
    assert [f.name for f in r.files] == [p.name for p in parts]
    assert r.weights_bytes == sum(h.tensor_data_bytes for h in headers)
    assert r.summary["params"] == sum(h.n_elements for h in headers) == 1024 * 1024 + 2 * 64 * 64
    assert r.fmt == "Q8_0" and r.revision == Repo({}).sha and r.ollama == "hf.co/org/tiny-GGUF:Q8_0"
    # No quant named: llama.cpp's default preference (Q4_K_M), and the choice is said.
    assert [f.name for f in default.files] == ["tiny-Q4_K_M.gguf"] and "chose tiny-Q4_K_M.gguf" in default.notes[0]


def test_missing_quant_lists_the_files(tmp_path):
    [p] = write_llama_gguf(tmp_path, "tiny-Q4_K_M.gguf", big=8)
    with HubServer(Hub(repos={"org/t-GGUF": Repo({p.name: OnDisk(p)})})) as url:
        with pytest.raises(RemoteError, match=r"no GGUF file for quant Q8_0 \(files: tiny-Q4_K_M.gguf\)"):
            resolve_remote("hf:org/t-GGUF:Q8_0", None, client(url))


def test_server_without_range_support_is_read_only_up_to_one_block(tmp_path):
    [path] = write_llama_gguf(tmp_path, "m.gguf", big=4096)
    hub = Hub(repos={"org/m": Repo({"m.gguf": OnDisk(path)})}, honour_range=False)
    with HubServer(hub) as url:
        c = client(url)
        r = resolve_remote(f"{url}/org/m/resolve/main/m.gguf", None, c)
    assert r.summary["layers"] == 2 and c.bytes_received <= 1 << 20


# ---------------------------------------------------------------------------------------------- safetensors


def test_recorded_gemma_checkpoint_resolves_from_its_real_header():
    """tests/fixtures/hub/gemma-3-270m-hf: the real config.json and safetensors header of the CI's Gemma 3 270M
    conversion (transformers 5.24.0); the 536 MB of weights behind the header are served as zeros."""
    repo = recorded_repo("gemma-3-270m-hf")
    hub = Hub(repos={"someone/gemma-3-270m-bf16": repo})
    with HubServer(hub) as url:
        r = resolve_remote("hf:someone/gemma-3-270m-bf16", None, client(url))
    header_len = struct.unpack("<Q", repo.files["model.safetensors"].prefix[:8])[0]
    assert r.kind == "safetensors" and r.fmt == "bf16" and dict(r.dtype_bytes) == {"BF16": 536223056 - 8 - header_len}
    assert r.summary["layers"] == 18 and r.summary["kv_heads"] == 1 and r.summary["swa_layers"] == 15
    assert r.files[0].sha256 == "d9df495ac8121f17441f73a45548b59cd75068fbd5e57ed0883c9e4a443fe908"
    assert hub.bytes_sent < 300_000  # config.json + one 256 KiB block, of a 536 MB file


def _safetensors(tensors: dict[str, tuple[str, list[int]]]) -> bytes:
    size = {"BF16": 2, "F8_E4M3": 1, "F32": 4}
    header, offset = {}, 0
    for name, (dtype, shape) in tensors.items():
        n = int(np.prod(shape)) * size[dtype]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + bytes(offset)


def test_sharded_fp8_checkpoint_is_priced_per_dtype_not_at_8_bits():
    """An FP8 checkpoint that keeps embeddings and attention in bf16 (as Meta's Llama-3.1-405B-Instruct-FP8 does):
    the bytes per dtype come from the headers of the shards the index names; consolidated.safetensors is ignored."""
    cfg = json.loads(recorded_repo("tiny-llama").files["config.json"])
    cfg["quantization_config"] = {"quant_method": "fp8", "activation_scheme": "dynamic"}
    s1 = _safetensors({"model.embed_tokens.weight": ("BF16", [1024, 128]),
                       "model.layers.0.self_attn.q_proj.weight": ("BF16", [128, 128])})
    s2 = _safetensors({"model.layers.0.mlp.up_proj.weight": ("F8_E4M3", [256, 128]),
                       "model.layers.0.mlp.up_proj.weight_scale": ("F32", [1])})
    index = {"weight_map": {"model.embed_tokens.weight": "model-00001-of-00002.safetensors",
                            "model.layers.0.self_attn.q_proj.weight": "model-00001-of-00002.safetensors",
                            "model.layers.0.mlp.up_proj.weight": "model-00002-of-00002.safetensors"}}
    files = {"config.json": json.dumps(cfg).encode(), "model.safetensors.index.json": json.dumps(index).encode(),
             "model-00001-of-00002.safetensors": s1, "model-00002-of-00002.safetensors": s2,
             "consolidated.safetensors": s1 + s2}
    with HubServer(Hub(repos={"org/tiny-FP8": Repo(files)})) as url:
        r = resolve_remote("hf:org/tiny-FP8", None, client(url))
    assert dict(r.dtype_bytes) == {"BF16": (1024 * 128 + 128 * 128) * 2, "F32": 4, "F8_E4M3": 256 * 128}
    assert r.fmt == "fp8" and r.weights_bytes == sum(r.dtype_bytes.values())
    params = 1024 * 128 + 128 * 128 + 256 * 128 + 1
    assert r.weights_bytes > 1.5 * params  # pricing every weight at 8 bits would say ~1.03 x params
    assert [f.name for f in r.files] == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]


def test_a_float32_repo_is_locked_with_the_16_bit_bytes_vllm_loads():
    """The same rule as a local folder (hf.checkpoint_sizes): an fp32 repository's F32 tensors load at 2 bytes."""
    from stackgen.models.lock import facts_from_resolved

    cfg = json.loads(recorded_repo("tiny-llama").files["config.json"])
    cfg["torch_dtype"] = "float32"
    st = _safetensors({"model.embed_tokens.weight": ("F32", [1024, 128]), "model.norm.weight": ("BF16", [128])})
    files = {"config.json": json.dumps(cfg).encode(), "model.safetensors": st}
    with HubServer(Hub(repos={"org/tiny-f32": Repo(files)})) as url:
        r = resolve_remote("hf:org/tiny-f32", None, client(url))
    facts = facts_from_resolved("hf:org/tiny-f32", None, r)
    assert facts.hf_sizes == {"fp32": 1024 * 128 * 4 + 256, "bf16": 1024 * 128 * 2 + 256}


def test_consolidated_copy_without_an_index_is_not_counted_remotely_either():
    cfg = recorded_repo("tiny-llama").files["config.json"]
    shard = _safetensors({"model.norm.weight": ("BF16", [128])})
    files = {"config.json": cfg, "model-00001-of-00001.safetensors": shard,
             "consolidated.safetensors": _safetensors({"norm.weight": ("BF16", [128])})}
    with HubServer(Hub(repos={"org/mistral-like": Repo(files)})) as url:
        r = resolve_remote("hf:org/mistral-like", None, client(url))
    assert [f.name for f in r.files] == ["model-00001-of-00001.safetensors"] and r.weights_bytes == 256


def test_repo_with_only_config_is_refused():
    files = {"config.json": recorded_repo("tiny-llama").files["config.json"], "README.md": b"hi"}
    with HubServer(Hub(repos={"org/empty": Repo(files)})) as url:
        with pytest.raises(RemoteError, match="no weights found"):
            resolve_remote("hf:org/empty", None, client(url))


def test_local_folder_with_only_config_is_refused(write_stack, tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_bytes(recorded_repo("tiny-llama").files["config.json"])
    f = write_stack(stack_text("./m"))
    with pytest.raises(SpecError, match="no weights found"):
        load_stack(f)
    assert hfmodel.read_hf_folder(tmp_path / "m").weights_bytes == 0  # the reader itself still reads it


# ---------------------------------------------------------------------------------------------- the client


def test_gated_repo_says_set_hf_token_and_the_token_is_used_but_never_written(env_hub, write_stack, cli,
                                                                              monkeypatch):
    repo = recorded_repo("tiny-llama")
    repo.gated_token = "hf_secret_value"
    hub = Hub(repos={"meta/gated": repo})
    env_hub(hub)
    f = write_stack(stack_text("hf:meta/gated"))
    res = cli("lock", f)
    assert res.exit_code == 1 and "gated or private" in res.output and "HF_TOKEN" in res.output
    assert "Traceback" not in res.output
    monkeypatch.setenv("HF_TOKEN", "hf_secret_value")
    res = cli("lock", f)
    assert res.exit_code == 0, res.output
    assert "hf_secret_value" not in lock_path_for(f).read_text()
    assert all(e["auth"] for e in hub.log[1:])


def test_token_goes_only_to_the_hf_endpoint():
    c = HttpClient(env={"HF_ENDPOINT": "http://127.0.0.1:9", "HF_TOKEN": "t"})
    assert c._auth("http://127.0.0.1:9/x") == {"Authorization": "Bearer t"}
    assert c._auth("https://cdn-lfs.example.org/x") == {} and c._auth("http://127.0.0.1:10/x") == {}


def test_the_token_never_travels_in_clear_text_to_a_remote_host():
    """An audit's `model: http://127.0.0.1:18170/...` with HF_ENDPOINT=https://127.0.0.1:18170 (host and port alike)
    received `Authorization: Bearer <token>`: the scheme was not compared, so a stack naming the hub over http://
    sent the token in clear. The token goes only to the endpoint's own scheme, and over http only to this machine."""
    c = HttpClient(env={"HF_ENDPOINT": "https://huggingface.co", "HF_TOKEN": "t"})
    assert c._auth("https://huggingface.co/org/repo/resolve/main/m.gguf") == {"Authorization": "Bearer t"}
    assert c._auth("http://huggingface.co/org/repo/resolve/main/m.gguf") == {}
    assert c._auth("http://huggingface.co:443/x") == {}
    plain = HttpClient(env={"HF_ENDPOINT": "http://mirror.example.org", "HF_TOKEN": "t"})
    assert plain._auth("http://mirror.example.org/x") == {}  # a remote endpoint over http gets no token either


def test_retries_with_backoff_then_succeeds(tmp_path):
    [p] = write_llama_gguf(tmp_path, "m.gguf", big=8)
    hub = Hub(repos={"org/m": Repo({"m.gguf": OnDisk(p)})}, fail_next=[503, 429])
    slept = []
    with HubServer(hub) as url:
        c = HttpClient(env={"HF_ENDPOINT": url}, sleep=slept.append)
        resolve_remote(f"{url}/org/m/resolve/main/m.gguf", None, c)
        hub.fail_next = [502] * 4
        with pytest.raises(RemoteError, match="failed after 4 tries"):
            resolve_remote(f"{url}/org/m/resolve/main/m.gguf", None, c)
    assert slept[:2] == [0.5, 1.0]


def test_connection_refused_is_an_error_not_a_traceback():
    c = HttpClient(env={"HF_ENDPOINT": "http://127.0.0.1:9"}, retries=1, sleep=lambda s: None, timeout_s=2)
    with pytest.raises(RemoteError, match="failed after 2 tries"):
        resolve_remote("hf:org/x", None, c)


# ---------------------------------------------------------------------------------------------- Ollama


def test_ollama_manifest_names_the_model_layer_and_its_header_is_read(tmp_path):
    [p] = write_llama_gguf(tmp_path, "blob.gguf", big=2048)
    hub = Hub()
    digest = hub.add_manifest("library/tiny:1b", [
        ("application/vnd.ollama.image.model", OnDisk(p)),
        ("application/vnd.ollama.image.template", b"{{ .Prompt }}"),
        ("application/vnd.ollama.image.params", b'{"stop": ["<end_of_turn>"]}')])
    with HubServer(hub) as url:
        r = resolve_remote("ollama:tiny:1b", None, client(url))
        with pytest.raises(RemoteError, match="404"):
            resolve_remote("ollama:tiny:2b", None, client(url))
    assert r.source == "ollama" and r.revision == digest and r.ollama == "tiny:1b"
    assert r.weights_bytes == sg_gguf.read_gguf_header(p).tensor_data_bytes
    assert 'params: {"stop": ["<end_of_turn>"]}' in r.notes
    assert hub.bytes_sent < 1.2 * (1 << 20) < p.stat().st_size


# ---------------------------------------------------------------------------------------------- stack.lock


def _gguf_hub(tmp_path) -> tuple[Hub, Path]:
    [p] = write_llama_gguf(tmp_path, "tiny-Q4_K_M.gguf", big=64)
    return Hub(repos={"org/tiny-GGUF": Repo({p.name: OnDisk(p)}, sha256={p.name: "ab" * 32})}), p


def test_render_without_lock_resolves_writes_the_lock_and_then_needs_no_network(env_hub, write_stack, cli, tmp_path,
                                                                                 monkeypatch):
    hub, _ = _gguf_hub(tmp_path)
    env_hub(hub)
    f = write_stack(stack_text("hf:org/tiny-GGUF:Q4_K_M"))
    out1, out2 = tmp_path / "d1", tmp_path / "d2"
    res = cli("render", f, "-o", out1)
    assert res.exit_code == 0, res.output
    lock = lock_path_for(f)
    text = lock.read_text()
    assert '"revision": "0123456789abcdef' in text and '"sha256": "abab' in text
    requests = len(hub.log)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    res = cli("render", f, "-o", out2)
    assert res.exit_code == 0, res.output
    assert len(hub.log) == requests  # the lock answered; no request
    assert (out1 / "chat" / "run.sh").read_bytes() == (out2 / "chat" / "run.sh").read_bytes()
    run_sh = (out2 / "chat" / "run.sh").read_text()
    # -hf takes no revision; the Hub's resolve URL at the locked commit does (issue 12)
    sha = read_lock(lock)[("hf:org/tiny-GGUF:Q4_K_M", "")].resolved["revision"]
    assert f"-mu https://huggingface.co/org/tiny-GGUF/resolve/{sha}/tiny-Q4_K_M.gguf" in run_sh
    assert "-hf " not in run_sh
    assert dump_lock(read_lock(lock)) == text  # read -> write is byte-identical
    res = cli("lock", f, "--check")
    assert res.exit_code == 0 and "up to date" in res.output


def test_a_locked_hub_gguf_fetched_by_its_resolve_url_gets_the_token_by_reference(env_hub, write_stack, cli,
                                                                                     tmp_path, monkeypatch):
    # review M3: once locked, an hf: GGUF is rendered as `-mu https://huggingface.co/<repo>/resolve/<sha>/<file>`,
    # which llama-server downloads from the Hub at start (sending HF_TOKEN), but hub_fetched excluded every URL
    hub, _ = _gguf_hub(tmp_path)
    env_hub(hub)
    monkeypatch.setenv("HF_TOKEN", "hf_canary_m3")
    f = write_stack(stack_text("hf:org/tiny-GGUF:Q4_K_M", "    engine: llama.cpp\n    port: 19912\n"
                               "targets: [script, compose, systemd, kubernetes]\n"))
    out = tmp_path / "d"
    res = cli("render", f, "-o", out)
    assert res.exit_code == 0, res.output
    assert "-mu https://huggingface.co/org/tiny-GGUF/resolve/" in (out / "chat" / "run.sh").read_text()
    compose = (out / "compose" / "compose.yaml").read_text()
    assert "HF_TOKEN: ${HF_TOKEN:-}" in compose
    [unit] = [p for p in (out / "systemd").iterdir() if p.name.endswith("-chat.service")]
    assert "EnvironmentFile=-/etc/stackgen/" in unit.read_text() and "hf-token.env" in unit.read_text()
    assert "secretKeyRef" in (out / "kubernetes" / "chat.yaml").read_text()
    assert not [p for p in out.rglob("*") if p.is_file() and "hf_canary_m3" in p.read_text()]
    # only the Hub's own host: a token never goes to a third party or in clear text
    from stackgen.render.container_spec import hub_resolve_url

    assert hub_resolve_url("https://huggingface.co/org/r/resolve/abc/f.gguf")
    for url in ("https://example.com/org/r/resolve/abc/f.gguf", "http://huggingface.co/org/r/resolve/abc/f.gguf",
                "https://huggingface.co.evil.net/org/r/resolve/abc/f.gguf", "https://x@evil.net/org/r/resolve/a/f",
                "https://huggingface.co@evil.net/org/r/resolve/a/f", "https://huggingface.co/org/r/blob/abc/f.gguf"):
        assert not hub_resolve_url(url), url


def test_offline_without_lock_names_the_lock_file(env_hub, write_stack, cli, tmp_path, monkeypatch):
    hub, _ = _gguf_hub(tmp_path)
    env_hub(hub)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    f = write_stack(stack_text("hf:org/tiny-GGUF"))
    res = cli("plan", f)
    assert res.exit_code == 1 and "HF_HUB_OFFLINE=1" in res.output and "stack.lock does not exist" in res.output
    assert "stackgen lock" in res.output and hub.log == []


def test_lock_that_does_not_match_the_stack_says_run_lock(env_hub, write_stack, cli, tmp_path):
    hub, _ = _gguf_hub(tmp_path)
    env_hub(hub)
    f = write_stack(stack_text("hf:org/tiny-GGUF"))
    assert cli("lock", f).exit_code == 0
    f.write_text(stack_text("hf:org/tiny-GGUF", "    quant: Q8_0\n"))
    res = cli("plan", f)
    assert res.exit_code == 1 and "no entry for hf:org/tiny-GGUF with quant Q8_0" in res.output
    assert f"run `stackgen lock {f}`" in res.output


def test_lock_upgrade_shows_what_changed(env_hub, write_stack, cli, tmp_path):
    hub, _ = _gguf_hub(tmp_path)
    env_hub(hub)
    f = write_stack(stack_text("hf:org/tiny-GGUF"))
    assert cli("lock", f).exit_code == 0
    before = lock_path_for(f).read_text()
    (tmp_path / "new").mkdir()
    [bigger] = write_llama_gguf(tmp_path / "new", "tiny-Q4_K_M.gguf", big=128)
    hub.repos["org/tiny-GGUF"] = Repo({bigger.name: OnDisk(bigger)}, sha=SHA2)
    res = cli("lock", f)  # without --upgrade the pinned entry stays
    assert res.exit_code == 0 and "unchanged" in res.output and lock_path_for(f).read_text() == before
    assert cli("lock", f, "--check").exit_code == 0
    res = cli("lock", f, "--upgrade")
    assert res.exit_code == 0, res.output
    assert f"~ hf:org/tiny-GGUF: revision 0123456789abcdef0123456789abcdef01234567 -> {SHA2}" in res.output
    assert "~ hf:org/tiny-GGUF: weights_bytes" in res.output and "params" in res.output
    assert SHA2 in lock_path_for(f).read_text()


def test_remote_safetensors_plan_serves_the_checkpoint_it_sized(env_hub, write_stack, cli, tmp_path):
    env_hub(Hub(repos={"someone/gemma-3-270m-bf16": recorded_repo("gemma-3-270m-hf")}))
    f = write_stack(stack_text("hf:someone/gemma-3-270m-bf16", "    engine: vllm\n", hardware="a100-80gb"))
    assert cli("lock", f).exit_code == 0
    sp = resolve(load_stack(f), None).services[0]
    assert sp.engine == "vllm" and sp.model_ref == "someone/gemma-3-270m-bf16"
    sha = read_lock(lock_path_for(f))[("hf:someone/gemma-3-270m-bf16", "")].resolved["revision"]
    argv = list(sp.command)
    assert argv[argv.index("--revision") + 1] == sha == sp.model.revision  # the commit whose headers were sized
    assert argv[argv.index("--tokenizer-revision") + 1] == sha
    res = cli("render", f, "-o", tmp_path / "out")  # the flag check passes and run.sh carries the pin
    assert res.exit_code == 0, res.output
    assert f"--revision {sha}" in (tmp_path / "out" / "chat" / "run.sh").read_text().replace(" \\\n    ", " ")
    assert sp.memory.weights_bytes == sp.model.hf_sizes["bf16"] and sp.memory.weights_source == "header"
    f.write_text(stack_text("hf:someone/gemma-3-270m-bf16", "    quant: awq\n", hardware="a100-80gb"))
    res = cli("lock", f)
    assert res.exit_code == 1 and "is a bf16 checkpoint, not awq" in res.output


def test_ollama_reference_plans_with_ollama(env_hub, write_stack, cli, tmp_path):
    [p] = write_llama_gguf(tmp_path, "blob.gguf", big=64)
    hub = Hub()
    hub.add_manifest("library/tiny:1b", [("application/vnd.ollama.image.model", OnDisk(p))])
    env_hub(hub)
    f = write_stack(stack_text("ollama:tiny:1b"))
    assert cli("lock", f).exit_code == 0
    sp = resolve(load_stack(f), None).services[0]
    assert sp.engine == "ollama" and sp.model_ref == "tiny:1b"
    assert sp.memory.weights_bytes == sg_gguf.read_gguf_header(p).tensor_data_bytes


def test_a_split_gguf_is_pinned_by_its_first_part_and_a_url_or_catalog_model_is_left_alone():
    from dataclasses import replace

    from stackgen.models.lock import pin_gguf_url
    from stackgen.spec.profiles import load_profiles

    base = replace(load_profiles().models["gemma-3-270m"], source="gguf")
    parts = [{"name": f"Q8_0/m-Q8_0-0000{i}-of-00002.gguf", "size": 1} for i in (1, 2)]
    resolved = {"kind": "gguf", "repo": "org/m-GGUF", "revision": SHA2, "files": parts}
    want = f"https://huggingface.co/org/m-GGUF/resolve/{SHA2}/Q8_0/m-Q8_0-00001-of-00002.gguf"
    assert pin_gguf_url(base, resolved).url == want
    assert pin_gguf_url(replace(base, url="https://x/y.gguf"), resolved).url == "https://x/y.gguf"
    assert pin_gguf_url(base, {**resolved, "revision": None}).url is None
    assert pin_gguf_url(replace(base, source="ollama"), resolved).url is None
