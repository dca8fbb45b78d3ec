"""The real Gemma 3 270M GGUF served over HTTP with Range by tests/tools/hub_server.py on 127.0.0.1: resolved as an
hf: GGUF repository and as an Ollama blob, it gives the same facts as the local file, from its header alone."""

from __future__ import annotations

from tools.hub_server import Hub, HubServer, OnDisk, Repo

from stackgen.models.hub import resolve_remote
from stackgen.models.lock import facts_from_resolved
from stackgen.models.facts import resolve_model
from stackgen.models.remote import HttpClient


def test_gemma_gguf_over_range_matches_the_local_file(gguf_path, tmp_path):
    hub = Hub(repos={"google/gemma-3-270m-GGUF": Repo({gguf_path.name: OnDisk(gguf_path)})})
    hub.add_manifest("library/gemma3:270m", [("application/vnd.ollama.image.model", OnDisk(gguf_path)),
                                             ("application/vnd.ollama.image.params", b'{"stop":["<end_of_turn>"]}')])
    local = resolve_model(str(gguf_path), None, tmp_path, {})
    with HubServer(hub) as url:
        env = {"HF_ENDPOINT": url, "STACKGEN_OLLAMA_REGISTRY": url}
        for ref in ("hf:google/gemma-3-270m-GGUF:Q4_K_M", "ollama:gemma3:270m"):
            hub.log.clear()
            r = resolve_remote(ref, None, HttpClient(env=env))
            facts = facts_from_resolved(ref, None, r)
            for key in ("architecture", "layers", "hidden", "heads", "kv_heads", "head_dim_k", "context_length",
                        "sliding_window", "swa_layers", "params", "vocab"):
                assert getattr(facts, key) == getattr(local, key), (ref, key)
            assert facts.gguf_sizes == {"Q4_K_M": 246_587_904} == dict(local.gguf_sizes)
            # The header ends at byte 6,525,120 of 253,113,024: the reader fetches ~7.3 MB (blocks of 1, 2, 4 MiB).
            assert hub.bytes_sent < 8 << 20 and hub.bytes_sent < 0.04 * gguf_path.stat().st_size
