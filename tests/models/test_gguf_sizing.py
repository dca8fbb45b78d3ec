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
