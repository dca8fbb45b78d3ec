"""A copy of a GGUF whose trained context is made small and whose header carries YaRN keys, so a test can serve a
context past the "trained" one cheaply (a few thousand tokens instead of 32k+).

gguf-py's own gguf_new_metadata.copy_with_new_metadata copies every tensor and key, replacing the named ones."""

from __future__ import annotations

from pathlib import Path


def yarn_gguf(src: Path, dest: Path, native: int, factor: float) -> Path:
    import gguf
    from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata

    reader = gguf.GGUFReader(str(src), "r")
    arch = str(reader.get_field("general.architecture").contents())
    writer = gguf.GGUFWriter(str(dest), arch=arch, endianess=reader.endianess)
    new = {
        f"{arch}.context_length": MetadataDetails(gguf.GGUFValueType.UINT32, native),
        f"{arch}.rope.scaling.type": MetadataDetails(gguf.GGUFValueType.STRING, "yarn"),
        f"{arch}.rope.scaling.factor": MetadataDetails(gguf.GGUFValueType.FLOAT32, factor),
        f"{arch}.rope.scaling.original_context_length": MetadataDetails(gguf.GGUFValueType.UINT32, native),
    }
    copy_with_new_metadata(reader, writer, new, [])
    return dest
