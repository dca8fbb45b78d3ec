"""Header-only GGUF reader.

A memory planner needs a model's shape (layers, heads, KV heads, context,
sliding window, quantisation, weight bytes) but none of its weights or its
vocabulary.  The ``gguf`` package parses every array (a 262k-entry vocab takes
seconds), so this module walks the header with :mod:`struct` alone, seeks over
numeric array payloads and steps over string arrays by their length prefixes
inside a large read buffer.  Nothing here imports anything outside the
standard library.

Format reference: ggml's ``docs/gguf.md`` and ``ggml/src/gguf.cpp``.  The
checks mirror what llama.cpp refuses at load time, so a file this reader
accepts is one llama.cpp would at least get past the header with.
"""

from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, BinaryIO, Mapping

__all__ = [
    "GGUFError",
    "GGUFModelError",
    "ArrayInfo",
    "TensorInfo",
    "GGUFHeader",
    "GGML_TYPES",
    "LLAMA_FTYPE_NAMES",
    "read_gguf_header",
    "read_gguf_header_from",
    "summarize",
    "summarize_parts",
    "split_part_names",
]

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
GGML_MAX_DIMS = 4
SMALL_ARRAY_LIMIT = 4096
"""Numeric arrays up to this many elements are read (per-layer hparams)."""

_CHUNK = 1 << 20
_MAX_ARRAY_DEPTH = 8

# ggml type id -> (name, block_size in elements, bytes per block).
# From ggml.h / gguf-py GGML_QUANT_SIZES (QK_K = 256).  Ids 4, 5 (Q4_2, Q4_3)
# were removed long ago; 31-33 and 36-38 are the runtime-repacked Q4_0/IQ4_NL
# layouts that a few 2024 files still carry on disk with Q4_0's/IQ4_NL's
# block geometry.
GGML_TYPES: Mapping[int, tuple[str, int, int]] = MappingProxyType({
    0: ("F32", 1, 4),
    1: ("F16", 1, 2),
    2: ("Q4_0", 32, 18),
    3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24),
    8: ("Q8_0", 32, 34),
    9: ("Q8_1", 32, 40),
    10: ("Q2_K", 256, 84),
    11: ("Q3_K", 256, 110),
    12: ("Q4_K", 256, 144),
    13: ("Q5_K", 256, 176),
    14: ("Q6_K", 256, 210),
    15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66),
    17: ("IQ2_XS", 256, 74),
    18: ("IQ3_XXS", 256, 98),
    19: ("IQ1_S", 256, 50),
    20: ("IQ4_NL", 32, 18),
    21: ("IQ3_S", 256, 110),
    22: ("IQ2_S", 256, 82),
    23: ("IQ4_XS", 256, 136),
    24: ("I8", 1, 1),
    25: ("I16", 1, 2),
    26: ("I32", 1, 4),
    27: ("I64", 1, 8),
    28: ("F64", 1, 8),
    29: ("IQ1_M", 256, 56),
    30: ("BF16", 1, 2),
    31: ("Q4_0_4_4", 32, 18),
    32: ("Q4_0_4_8", 32, 18),
    33: ("Q4_0_8_8", 32, 18),
    34: ("TQ1_0", 256, 54),
    35: ("TQ2_0", 256, 66),
    36: ("IQ4_NL_4_4", 32, 18),
    37: ("IQ4_NL_4_8", 32, 18),
    38: ("IQ4_NL_8_8", 32, 18),
    39: ("MXFP4", 32, 17),
    40: ("NVFP4", 64, 36),
    41: ("Q1_0", 128, 18),
})

# llama_ftype (llama.h) -> the short names llama.cpp's quantize tool uses.
LLAMA_FTYPE_NAMES: Mapping[int, str] = MappingProxyType({
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    4: "Q4_1_SOME_F16",
    7: "Q8_0",
    8: "Q5_0",
    9: "Q5_1",
    10: "Q2_K",
    11: "Q3_K_S",
    12: "Q3_K_M",
    13: "Q3_K_L",
    14: "Q4_K_S",
    15: "Q4_K_M",
    16: "Q5_K_S",
    17: "Q5_K_M",
    18: "Q6_K",
    19: "IQ2_XXS",
    20: "IQ2_XS",
    21: "Q2_K_S",
    22: "IQ3_XS",
    23: "IQ3_XXS",
    24: "IQ1_S",
    25: "IQ4_NL",
    26: "IQ3_S",
    27: "IQ3_M",
    28: "IQ2_S",
    29: "IQ2_M",
    30: "IQ4_XS",
    31: "IQ1_M",
    32: "BF16",
    33: "Q4_0_4_4",
    34: "Q4_0_4_8",
    35: "Q4_0_8_8",
    36: "TQ1_0",
    37: "TQ2_0",
    38: "MXFP4_MOE",
    39: "NVFP4",
    40: "Q1_0",
    1024: "GUESSED",
})

# GGUF metadata value types: id -> (name, struct code, size).  STRING (8) and
# ARRAY (9) are variable-length and handled separately.
_STRING, _ARRAY = 8, 9
_SCALAR_TYPES: dict[int, tuple[str, str, int]] = {
    0: ("UINT8", "B", 1),
    1: ("INT8", "b", 1),
    2: ("UINT16", "H", 2),
    3: ("INT16", "h", 2),
    4: ("UINT32", "I", 4),
    5: ("INT32", "i", 4),
    6: ("FLOAT32", "f", 4),
    7: ("BOOL", "?", 1),
    10: ("UINT64", "Q", 8),
    11: ("INT64", "q", 8),
    12: ("FLOAT64", "d", 8),
}
VALUE_TYPE_NAMES: Mapping[int, str] = MappingProxyType(
    {**{k: v[0] for k, v in _SCALAR_TYPES.items()}, _STRING: "STRING", _ARRAY: "ARRAY"}
)

# Sliding-window period llama.cpp hard-codes per architecture when the GGUF
# has no ``attention.sliding_window_pattern`` key (set_swa_pattern(n): layer
# il is windowed when il % n < n - 1, i.e. every n-th layer is full attention).
_ARCH_SWA_PERIOD: Mapping[str, int] = MappingProxyType({
    "gemma2": 2,
    "gemma3": 6,
    "gemma-embedding": 6,
    "cohere2": 4,
})


class GGUFError(ValueError):
    """A file that is not a GGUF this reader can trust: truncated, corrupt,
    wrong magic or an unsupported version.  The message names the byte offset."""


class GGUFModelError(GGUFError):
    """A well-formed GGUF that is not a model llama.cpp can load or stackgen can size (no head counts, KV heads that
    do not divide the heads, no tensors at all). `hint`: what to do instead."""

    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.hint = hint


@dataclass(frozen=True)
class ArrayInfo:
    """Stands in for an array whose payload was skipped (the vocab, merges…)."""

    type_name: str
    length: int


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's descriptor; ``shape`` is in GGUF order (ne0 first)."""

    name: str
    type_name: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True)
class GGUFHeader:
    """Everything in a GGUF before its tensor data, minus big array payloads."""

    path: str
    version: int
    tensor_count: int
    metadata: Mapping[str, object]
    tensor_data_bytes: int
    data_offset: int
    file_size: int
    tensor_types: Mapping[str, int]
    tensors: tuple[TensorInfo, ...] = field(default=(), repr=False)
    n_elements: int = 0
    alignment: int = DEFAULT_ALIGNMENT
    byte_order: str = "little"

    @property
    def architecture(self) -> str:
        arch = self.metadata.get("general.architecture")
        return arch if isinstance(arch, str) else ""

    def arch_value(self, key: str, default: object = None) -> object:
        """Architecture-prefixed keys are the norm (``llama.block_count``)."""
        return self.metadata.get(f"{self.architecture}.{key}", default)

    @property
    def file_type_name(self) -> str | None:
        """None when ``general.file_type`` is absent or not a known llama_ftype."""
        ftype = self.metadata.get("general.file_type")
        if isinstance(ftype, bool) or not isinstance(ftype, int):
            return None
        return LLAMA_FTYPE_NAMES.get(ftype)


class _Cursor:
    """Buffered forward reader that knows absolute offsets for error messages.

    Reading through a private 1 MiB buffer (rather than many tiny f.read
    calls) is what makes stepping over 262k length-prefixed strings cheap.
    """

    def __init__(self, f: BinaryIO, path: str, file_size: int, endian: str) -> None:
        self.f = f
        self.path = path
        self.file_size = file_size
        self.buf = b""
        self.base = 0  # absolute offset of buf[0]
        self.pos = 0  # index into buf; may run past len(buf) after a skip
        e = endian
        self.u32 = struct.Struct(e + "I").unpack_from
        self.u64 = struct.Struct(e + "Q").unpack_from
        self.endian = e

    @property
    def offset(self) -> int:
        return self.base + self.pos

    def fail(self, msg: str, offset: int | None = None) -> GGUFError:
        at = self.offset if offset is None else offset
        return GGUFError(f"{self.path}: {msg} (at byte offset {at})")

    def need(self, n: int, what: str) -> None:
        """Make buf[pos:pos+n] readable, or say the file is truncated."""
        if self.pos + n <= len(self.buf):
            return
        start = self.offset
        if start + n > self.file_size:
            raise self.fail(
                f"truncated file: {what} needs {n} bytes but the file ends at byte {self.file_size}"
            )
        self.f.seek(start)
        data = self.f.read(max(n, _CHUNK))
        while len(data) < n:  # a reader may return less (stackgen.models.remote.RangeReader: what it already holds)
            more = self.f.read(n - len(data))
            if not more:  # file shrank under us
                raise self.fail(f"truncated file: short read for {what}")
            data += more
        self.buf, self.base, self.pos = data, start, 0

    def skip(self, n: int, what: str) -> None:
        if self.offset + n > self.file_size:
            raise self.fail(
                f"truncated file: {what} needs {n} bytes but the file ends at byte {self.file_size}"
            )
        self.pos += n

    def read_u32(self, what: str) -> int:
        self.need(4, what)
        v: int = self.u32(self.buf, self.pos)[0]
        self.pos += 4
        return v

    def read_u64(self, what: str) -> int:
        self.need(8, what)
        v: int = self.u64(self.buf, self.pos)[0]
        self.pos += 8
        return v

    def read_bytes(self, n: int, what: str) -> bytes:
        self.need(n, what)
        b = self.buf[self.pos:self.pos + n]
        self.pos += n
        return b

    def read_str(self, what: str, strict: bool) -> str:
        """Keys and tensor names must be UTF-8; values are decoded leniently."""
        start = self.offset
        n = self.read_u64(f"length of {what}")
        raw = self.read_bytes(n, what)
        try:
            return raw.decode("utf-8", "strict" if strict else "replace")
        except UnicodeDecodeError as exc:
            raise self.fail(f"{what} is not valid UTF-8 ({exc.reason})", start) from None

    def skip_string_array(self, count: int, what: str) -> None:
        """Step over ``count`` length-prefixed strings without decoding them.

        The hot loop has no bounds checks: unpack_from raises struct.error
        when the next length prefix is not fully in the buffer, and only then
        do we refill (or detect truncation).
        """
        if count * 8 > self.file_size - self.offset:
            raise self.fail(
                f"truncated file: {what} declares {count} strings, more than the file can hold"
            )
        unpack, i = self.u64, 0
        while i < count:
            buf, pos = self.buf, self.pos
            try:
                # i is read after struct.error: it names the element that did not fit.
                for i in range(i, count):  # noqa: B020, B007
                    pos += 8 + unpack(buf, pos)[0]
                i = count
            except (struct.error, OverflowError):
                # OverflowError: a corrupt length pushed pos past what unpack_from can index; need() reports it.
                pass
            self.pos = pos
            if i < count:
                self.need(8, f"{what} element {i} length")
        if self.offset > self.file_size:
            raise self.fail(
                f"truncated file: {what} runs past the end of the file ({self.file_size} bytes)",
                self.file_size,
            )


def _read_value(cur: _Cursor, vtype: int, key: str, depth: int = 0) -> object:
    """Scalars become Python values; arrays become tuples or ArrayInfo."""
    if vtype in _SCALAR_TYPES:
        _, code, size = _SCALAR_TYPES[vtype]
        raw = cur.read_bytes(size, f"value of {key!r}")
        return struct.unpack(cur.endian + code, raw)[0]
    if vtype == _STRING:
        return cur.read_str(f"string value of {key!r}", strict=False)
    if vtype == _ARRAY:
        return _read_array(cur, key, depth)
    raise cur.fail(f"unknown metadata value type {vtype} for key {key!r}", cur.offset - 4)


def _read_array(cur: _Cursor, key: str, depth: int) -> object:
    if depth >= _MAX_ARRAY_DEPTH:
        raise cur.fail(f"arrays nested deeper than {_MAX_ARRAY_DEPTH} in {key!r}")
    type_at = cur.offset
    etype = cur.read_u32(f"array element type of {key!r}")
    count = cur.read_u64(f"array length of {key!r}")
    what = f"array {key!r}"
    if etype in _SCALAR_TYPES:
        name, code, size = _SCALAR_TYPES[etype]
        if count <= SMALL_ARRAY_LIMIT:
            raw = cur.read_bytes(count * size, what)
            return struct.unpack(f"{cur.endian}{count}{code}", raw)
        cur.skip(count * size, what)
        return ArrayInfo(name, count)
    if etype == _STRING:
        cur.skip_string_array(count, what)
        return ArrayInfo("STRING", count)
    if etype == _ARRAY:
        if count * 12 > cur.file_size - cur.offset:
            raise cur.fail(f"truncated file: {what} declares {count} nested arrays")
        for _ in range(count):
            _read_array(cur, key, depth + 1)
        return ArrayInfo("ARRAY", count)
    raise cur.fail(f"unknown array element type {etype} in {key!r}", type_at)


def _read_preamble(f: BinaryIO, path: str, file_size: int) -> tuple[str, int, int, int]:
    """Magic, byte order, version, tensor and KV counts (24 bytes)."""
    head = f.read(24)
    if len(head) < 4 or head[:4] != GGUF_MAGIC:
        got = head[:4]
        raise GGUFError(f"{path}: not a GGUF file: magic is {got!r}, expected b'GGUF' (at byte offset 0)")
    if len(head) < 8:
        raise GGUFError(f"{path}: truncated file: no version field (at byte offset 4)")
    (version,) = struct.unpack_from("<I", head, 4)
    endian = "<"
    if version & 0xFFFF == 0 and struct.unpack_from(">I", head, 4)[0] in SUPPORTED_VERSIONS:
        endian = ">"  # big-endian GGUF (s390x conversions)
        (version,) = struct.unpack_from(">I", head, 4)
    if version == 1:
        raise GGUFError(
            f"{path}: GGUF version 1 is not supported (32-bit counts; re-convert the model) (at byte offset 4)"
        )
    if version not in SUPPORTED_VERSIONS:
        raise GGUFError(f"{path}: unsupported GGUF version {version} (at byte offset 4)")
    if len(head) < 24:
        raise GGUFError(
            f"{path}: truncated file: header needs 24 bytes but the file has {file_size} (at byte offset 8)"
        )
    tensor_count, kv_count = struct.unpack_from(endian + "QQ", head, 8)
    return endian, version, tensor_count, kv_count


def _read_metadata(cur: _Cursor, kv_count: int) -> dict[str, object]:
    # Each KV takes at least 8 (key len) + 4 (type) + 1 bytes.
    if kv_count * 13 > cur.file_size - cur.offset:
        raise cur.fail(f"truncated file: {kv_count} metadata entries cannot fit in the file")
    metadata: dict[str, object] = {}
    for i in range(kv_count):
        key_at = cur.offset
        key = cur.read_str(f"metadata key #{i}", strict=True)
        if key in metadata:
            raise cur.fail(f"duplicate metadata key {key!r}", key_at)
        vtype = cur.read_u32(f"value type of {key!r}")
        metadata[key] = _read_value(cur, vtype, key)
    return metadata


def _alignment(metadata: Mapping[str, object], cur: _Cursor) -> int:
    align = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if isinstance(align, bool) or not isinstance(align, int) or align <= 0 or align & (align - 1):
        raise cur.fail(f"general.alignment must be a positive power of two, got {align!r}")
    return align


def _read_tensor_infos(cur: _Cursor, count: int) -> list[tuple[TensorInfo, int]]:
    """Tensor descriptors plus the offset each started at (for messages)."""
    # Each descriptor takes at least 8 (name len) + 4 (n_dims) + 4 (type) + 8 (offset).
    if count * 24 > cur.file_size - cur.offset:
        raise cur.fail(f"truncated file: {count} tensor descriptors cannot fit in the file")
    out: list[tuple[TensorInfo, int]] = []
    for i in range(count):
        at = cur.offset
        name = cur.read_str(f"name of tensor #{i}", strict=True)
        n_dims = cur.read_u32(f"n_dims of tensor {name!r}")
        if n_dims > GGML_MAX_DIMS:
            raise cur.fail(f"tensor {name!r} has {n_dims} dimensions, at most {GGML_MAX_DIMS} allowed", at)
        raw = cur.read_bytes(8 * n_dims, f"shape of tensor {name!r}")
        shape = struct.unpack(f"{cur.endian}{n_dims}Q", raw)
        type_at = cur.offset
        ggml_type = cur.read_u32(f"type of tensor {name!r}")
        offset = cur.read_u64(f"data offset of tensor {name!r}")
        if ggml_type not in GGML_TYPES:
            raise cur.fail(f"tensor {name!r} has unknown ggml type {ggml_type}", type_at)
        type_name, block, type_size = GGML_TYPES[ggml_type]
        ne0 = shape[0] if shape else 1
        if ne0 % block:
            raise cur.fail(
                f"tensor {name!r} ({type_name}) has row length {ne0}, not a multiple of the block size {block}",
                at,
            )
        n = 1
        for d in shape:
            n *= d
        out.append((TensorInfo(name, type_name, shape, offset, n // block * type_size), at))
    return out


def _check_tensor_layout(
    cur: _Cursor, infos: list[tuple[TensorInfo, int]], data_offset: int, alignment: int
) -> None:
    """Every tensor must be aligned and lie inside the file; catches files cut
    anywhere in the data section, which the header alone would not reveal."""
    seen: set[str] = set()
    for t, at in infos:
        if t.name in seen:
            raise cur.fail(f"duplicate tensor name {t.name!r}", at)
        seen.add(t.name)
        if t.offset % alignment:
            raise cur.fail(f"tensor {t.name!r} data offset {t.offset} is not a multiple of {alignment}", at)
        end = data_offset + t.offset + t.nbytes
        if end > cur.file_size:
            raise cur.fail(
                f"truncated file: tensor {t.name!r} data ends at byte {end} "
                f"but the file has {cur.file_size} bytes",
                at,
            )


def read_gguf_header(path: str | os.PathLike[str]) -> GGUFHeader:
    """Read a GGUF's metadata and tensor table without loading arrays or weights.

    Raises GGUFError for anything structurally wrong, OSError if the file
    cannot be opened.
    """
    spath = os.fspath(path)
    with open(spath, "rb") as f:
        return read_gguf_header_from(f, spath, os.fstat(f.fileno()).st_size)


def read_gguf_header_from(f: BinaryIO, spath: str, file_size: int) -> GGUFHeader:
    """The same walk over any seekable reader of a file of `file_size` bytes: a local file, or
    :class:`stackgen.models.remote.RangeReader`, which fetches only the byte ranges this walk asks for."""
    endian, version, tensor_count, kv_count = _read_preamble(f, spath, file_size)
    cur = _Cursor(f, spath, file_size, endian)
    cur.base = 24
    metadata = _read_metadata(cur, kv_count)
    alignment = _alignment(metadata, cur)
    infos = _read_tensor_infos(cur, tensor_count)
    data_offset = -(-cur.offset // alignment) * alignment
    _check_tensor_layout(cur, infos, data_offset, alignment)
    tensors = tuple(t for t, _ in infos)
    counts: dict[str, int] = {}
    for t in tensors:
        counts[t.type_name] = counts.get(t.type_name, 0) + 1
    return GGUFHeader(
        path=spath,
        version=version,
        tensor_count=tensor_count,
        metadata=MappingProxyType(metadata),
        tensor_data_bytes=sum(t.nbytes for t in tensors),
        data_offset=data_offset,
        file_size=file_size,
        tensor_types=MappingProxyType(counts),
        tensors=tensors,
        n_elements=sum(t.n_elements for t in tensors),
        alignment=alignment,
        byte_order="little" if endian == "<" else "big",
    )


def _as_int(value: object) -> int | None:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _scalar_or_max(value: object) -> tuple[int | None, tuple[int, ...] | None]:
    """Per-layer hparams (OpenELM heads, hybrid models' KV heads) come as
    arrays; planners want the worst case plus the array itself."""
    if isinstance(value, tuple):
        ints = tuple(v for v in (_as_int(x) for x in value) if v is not None)
        return (max(ints) if ints else None), ints
    return _as_int(value), None


def _sliding_layers(layers: int | None, window: int | None, pattern: object) -> int | None:
    """Number of windowed layers, following llama.cpp's set_swa_pattern."""
    if not layers or not window:
        return None
    if isinstance(pattern, tuple):
        return sum(1 for v in pattern[:layers] if v)
    period = _as_int(pattern)
    if period is None or period == 0:
        return layers  # no pattern, or llama.cpp's "every layer" value
    if period < 0:
        return None
    # Layer il is full attention when il % period == period - 1.
    return layers - layers // period


def experts_summary(total: int | None, active: int | None) -> dict[str, int | None] | None:
    """MoE routing as one value, None for dense models (expert_count 0 or absent); shared with hfmodel."""
    if not total:
        return None
    return {"total": total, "active": active}


def summarize(header: GGUFHeader) -> dict[str, Any]:
    """The facts a memory planner needs, under names shared with hfmodel."""
    arch = header.architecture
    av = header.arch_value
    layers = _as_int(av("block_count"))
    hidden = _as_int(av("embedding_length"))
    ffn, ffn_per_layer = _scalar_or_max(av("feed_forward_length"))
    heads, heads_per_layer = _scalar_or_max(av("attention.head_count"))
    kv_raw = av("attention.head_count_kv")
    kv_heads, kv_per_layer = _scalar_or_max(kv_raw) if kv_raw is not None else (heads, None)
    default_dim = hidden // heads if hidden and heads else None
    # llama.cpp defaults both to n_embd / n_head, independently of each other.
    head_dim_k = _as_int(av("attention.key_length"))
    head_dim_v = _as_int(av("attention.value_length"))
    head_dim_k = default_dim if head_dim_k is None else head_dim_k
    head_dim_v = default_dim if head_dim_v is None else head_dim_v
    window = _as_int(av("attention.sliding_window")) or None
    pattern = av("attention.sliding_window_pattern")
    if pattern is None and window:
        pattern = _ARCH_SWA_PERIOD.get(arch)
    tokens = header.metadata.get("tokenizer.ggml.tokens")
    vocab: int | None
    if isinstance(tokens, (ArrayInfo, tuple)):
        vocab = tokens.length if isinstance(tokens, ArrayInfo) else len(tokens)
    else:
        vocab = _as_int(av("vocab_size"))
    quant, guessed = file_type(header)
    return {
        "architecture": arch,
        "layers": layers,
        "hidden": hidden,
        "ffn": ffn,
        "ffn_per_layer": ffn_per_layer,
        "heads": heads,
        "heads_per_layer": heads_per_layer,
        "kv_heads": kv_heads,
        "kv_heads_per_layer": kv_per_layer,
        "head_dim_k": head_dim_k,
        "head_dim_v": head_dim_v,
        # llama_hparams::is_mla(): both MLA head lengths set; the cache then holds K only (facts.ModelFacts.kv_k_only)
        "kv_k_only": av("attention.key_length_mla") is not None and av("attention.value_length_mla") is not None,
        "context_length": _as_int(av("context_length")),
        "sliding_window": window,
        "sliding_window_pattern": pattern,
        "swa_layers": _sliding_layers(layers, window, pattern),
        "experts": experts_summary(_as_int(av("expert_count")), _as_int(av("expert_used_count"))),
        "vocab_size": vocab,
        "params": header.n_elements,
        "quant": quant,
        "quant_guessed": guessed,
        "tensor_data_bytes": header.tensor_data_bytes,
        "file_size": header.file_size,
        "rope_scaling": _rope_scaling(av),
        **_recurrent_layers(arch, av, layers, hidden, heads, kv_heads, kv_per_layer, ffn_per_layer),
        **_edge_tensor_bytes(header.tensors),
    }


# Architectures whose hybrid layers are recurrent only where a layer has neither attention heads nor a feed-forward
# (the others with no attention heads are MLP-only): src/llama-model.cpp load_hparams, LLM_ARCH_NEMOTRON_H*
# `recurrent_layer_arr[i] = n_head_kv(i) == 0 && n_ff(i) == 0`. Elsewhere (LLM_ARCH_JAMBA, GRANITE_HYBRID, LFM2, ...)
# a layer without attention heads is recurrent.
_RECURRENT_NEEDS_NO_FFN = frozenset({"nemotron_h", "nemotron_h_moe"})


def _recurrent_layers(arch: str, av, layers: int | None, hidden: int | None, heads: int | None, kv_heads: int | None,
                      kv_per_layer: tuple[int, ...] | None, ffn_per_layer: tuple[int, ...] | None) -> dict[str, Any]:
    """Which layers hold attention KV and which a recurrent state, and that state's bytes per sequence.

    llama.cpp's KV cache sums n_head_kv(il) over the layers (engines.md 1.4: KV_bytes = sum over layers), so a
    per-layer head_count_kv with zeros (LFM2, Granite-H, Jamba, Nemotron-H) has no KV on those layers. Recurrent
    layers (Mamba/SSM, LFM2's short convolutions, RWKV) keep a fixed f32 state per sequence instead (engines.md
    1.4; the state sizes are src/llama-hparams.cpp n_embd_r() + n_embd_s(), the per-layer formula of engines.md 2.5:
    ((d_conv - 1)(d_inner + 2 n_group d_state) + d_state d_inner) x 4 B; RWKV: token_shift_count x n_embd +
    n_embd x wkv.head_size; LFM2: n_embd x (shortconv.l_cache - 1) + 0). Which layers are recurrent
    (src/llama-model.cpp load_hparams): every layer of a recurrent-only model (no attention heads); the layers
    without KV heads of a hybrid (Nemotron-H: without a feed-forward too); all but every full_attention_interval-th
    of Qwen3-Next style models (whose attention layers are the rest); every layer of a model with state keys and
    attention everywhere (Falcon-H1 runs both in each layer).

    Gives `attention_kv_heads_per_layer` (KV heads of each layer, 0 where it has none; None when every layer has
    the same), `recurrent_layers` and `recurrent_state_bytes` (one sequence, all recurrent layers)."""
    out: dict[str, Any] = {"attention_kv_heads_per_layer": None, "recurrent_layers": 0, "recurrent_state_bytes": 0}
    if not layers or layers <= 0:
        return out
    kv = list(kv_per_layer[:layers]) if kv_per_layer and len(kv_per_layer) >= layers else None
    d_conv, d_inner = _as_int(av("ssm.conv_kernel")) or 0, _as_int(av("ssm.inner_size")) or 0
    d_state, n_group = _as_int(av("ssm.state_size")) or 0, _as_int(av("ssm.group_count")) or 0
    l_cache, wkv = _as_int(av("shortconv.l_cache")) or 0, _as_int(av("wkv.head_size")) or 0
    n_embd = hidden or 0
    if wkv:
        shift = _as_int(av("token_shift_count"))
        per_layer = ((2 if shift is None else shift) * n_embd + n_embd * wkv) * 4
    elif l_cache:
        per_layer = n_embd * (l_cache - 1) * 4
    elif d_inner and d_state:
        per_layer = (max(d_conv - 1, 0) * (d_inner + 2 * n_group * d_state) + d_state * d_inner) * 4
    else:
        per_layer = 0
    if per_layer <= 0:  # no recurrent state: only zeros in a per-layer head_count_kv change the KV
        if kv is not None and len(set(kv)) > 1:
            out["attention_kv_heads_per_layer"] = tuple(kv)
        return out
    interval = _as_int(av("full_attention_interval"))
    if interval and interval > 0:
        recurrent = [(i + 1) % interval != 0 for i in range(layers)]
        attn = [0 if r else (kv[i] if kv else (kv_heads or 0)) for i, r in enumerate(recurrent)]
    elif kv is not None:
        ff = list(ffn_per_layer[:layers]) if ffn_per_layer and len(ffn_per_layer) >= layers else None
        no_ffn = arch in _RECURRENT_NEEDS_NO_FFN and ff is not None
        recurrent = [k == 0 and (not no_ffn or ff[i] == 0) for i, k in enumerate(kv)]  # type: ignore[index]
        attn = kv
    elif wkv or not heads or not kv_heads:
        recurrent, attn = [True] * layers, [0] * layers  # recurrent only (Mamba, RWKV)
    else:
        recurrent, attn = [True] * layers, [kv_heads] * layers  # state and attention in every layer (Falcon-H1)
    n = sum(recurrent)
    out.update(recurrent_layers=n, recurrent_state_bytes=n * per_layer)
    if len(set(attn)) > 1 or (attn and attn[0] != kv_heads):
        out["attention_kv_heads_per_layer"] = tuple(attn)
    return out


# The name llama.cpp gives and expects for the parts of a split GGUF (src/llama.cpp llama_split_path:
# "%s-%05d-of-%05d.gguf"; llama_split_prefix takes the prefix back off the first part's name).
SPLIT_NAME = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$", re.IGNORECASE)


def split_part_names(name: str) -> list[str] | None:
    """The file names of every part of the split GGUF whose first part is `name` (`x-00001-of-00003.gguf` ->
    x-00001..x-00003), or None when `name` is not the first part of a split (llama.cpp's loader accepts only the
    first part and finds the others beside it by this name, src/llama-model-loader.cpp llama_get_list_splits)."""
    m = SPLIT_NAME.search(name)
    if m is None or int(m.group(1)) != 1:
        return None
    prefix, count = name[:m.start()], int(m.group(2))
    return [f"{prefix}-{i:05d}-of-{count:05d}.gguf" for i in range(1, count + 1)]


def summarize_parts(headers: "list[GGUFHeader] | tuple[GGUFHeader, ...]") -> dict[str, Any]:
    """The summary of a GGUF given as all its parts, first part first (one header for a whole file): metadata from
    the first part (gguf-split writes the model's keys there only), tensors, parameters and bytes summed over every
    part, checked with check_summary. The one rule for split files, local (models/facts.py) and remote
    (models/hub.py). Raises GGUFError when the first part's split.count disagrees with the parts given."""
    first = headers[0]
    count = first.metadata.get("split.count")
    if isinstance(count, int) and not isinstance(count, bool) and count != len(headers):
        raise GGUFError(f"{first.path} says split.count={count} but {len(headers)} parts were found")
    s = summarize(first)
    check_summary(first, s)
    if not any(h.tensor_count for h in headers):
        raise GGUFModelError("the file has no tensors: a vocabulary-only GGUF (like llama.cpp's ggml-vocab-*.gguf "
                             "test files) has no weights to serve", "point `model:` at the model's weights GGUF")
    if len(headers) > 1:
        tensors = tuple(t for h in headers for t in h.tensors)
        s["params"] = sum(h.n_elements for h in headers)
        s["tensor_data_bytes"] = sum(h.tensor_data_bytes for h in headers)
        s["file_size"] = sum(h.file_size for h in headers)
        s.update(_edge_tensor_bytes(tensors))  # output.weight may sit in the last part
        s["quant"], s["quant_guessed"] = file_type(first, tensors)
    return s


# The file type llama.cpp names a GGUF without general.file_type by: its tensors' most common ggml type
# (src/llama-model-loader.cpp, llama_model_loader's constructor: "determine file type based on the number of tensors
# for each quantization", then `ftype | LLAMA_FTYPE_GUESSED`; a general.file_type key overrides the guess). Types it
# has no case for are "all F32" there too.
_GUESSED_FTYPE: Mapping[str, str] = MappingProxyType({
    "F32": "F32", "F16": "F16", "BF16": "BF16", "Q4_0": "Q4_0", "Q4_1": "Q4_1", "Q5_0": "Q5_0", "Q5_1": "Q5_1",
    "Q8_0": "Q8_0", "Q2_K": "Q2_K", "Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M", "Q6_K": "Q6_K",
    "TQ1_0": "TQ1_0", "TQ2_0": "TQ2_0", "IQ2_XXS": "IQ2_XXS", "IQ2_XS": "IQ2_XS", "IQ2_S": "IQ2_S",
    "IQ3_XXS": "IQ3_XXS", "IQ1_S": "IQ1_S", "IQ1_M": "IQ1_M", "IQ4_NL": "IQ4_NL", "IQ4_XS": "IQ4_XS",
    "IQ3_S": "IQ3_S", "MXFP4": "MXFP4_MOE", "NVFP4": "NVFP4", "Q1_0": "Q1_0",
})


def guess_file_type(tensors: "tuple[TensorInfo, ...] | list[TensorInfo]") -> str | None:
    """llama.cpp's guess of a file type from the tensor table (see _GUESSED_FTYPE): walking the tensors in name
    order (its weights_map is a std::map), the first type to reach the highest count. None without tensors."""
    counts: dict[str, int] = {}
    best, best_n = None, 0
    for t in sorted(tensors, key=lambda t: t.name.encode()):
        counts[t.type_name] = counts.get(t.type_name, 0) + 1
        if counts[t.type_name] > best_n:
            best, best_n = t.type_name, counts[t.type_name]
    return None if best is None else _GUESSED_FTYPE.get(best, "F32")


def file_type(header: GGUFHeader, tensors: "tuple[TensorInfo, ...] | None" = None) -> tuple[str | None, bool]:
    """(the quant name of the file, whether it was guessed from the tensors): general.file_type when it names a
    llama_ftype, else llama.cpp's guess over `tensors` (all parts of a split; the header's own by default)."""
    name = header.file_type_name
    if name is not None and name != "GUESSED":
        return name, False
    guess = guess_file_type(header.tensors if tensors is None else tensors)
    return guess, guess is not None


def _edge_tensor_bytes(tensors: tuple[TensorInfo, ...]) -> dict[str, Any]:
    """Bytes of the tensors outside the repeating blocks, as llama.cpp places them (src/llama-model.cpp
    load_tensors): the input layer (token_embd.*) always stays in host memory; the output layer (output.weight,
    output_norm.*) is the first one -ngl offloads. A file without output.weight ties the output to the embedding:
    llama.cpp loads a second copy of token_embd as the output (TENSOR_DUPLICATED), so the output layer costs the
    embedding's bytes on the GPU while the file holds them once. Empty when the file lists no tensors."""
    if not tensors:
        return {}
    inputs = sum(t.nbytes for t in tensors if t.name.startswith("token_embd."))
    outputs = sum(t.nbytes for t in tensors if not t.name.startswith(("blk.", "token_embd.")))
    tied = not any(t.name == "output.weight" for t in tensors)
    embd = next((t.nbytes for t in tensors if t.name == "token_embd.weight"), 0)
    return {"input_bytes": inputs, "output_bytes": outputs + (embd if tied else 0), "output_tied": tied}


def _rope_scaling(av) -> dict[str, Any] | None:
    """The RoPE scaling llama.cpp applies from the file (src/llama-arch.cpp: %s.rope.scaling.type, .factor,
    .original_context_length; %s.rope.freq_base), under the names hfmodel.summarize uses."""
    kind = av("rope.scaling.type")
    if not isinstance(kind, str) or kind == "none":
        return None
    factor = av("rope.scaling.factor")
    return {"type": kind, "factor": float(factor) if isinstance(factor, (int, float)) else None,
            "original_context": _as_int(av("rope.scaling.original_context_length")),
            "rope_theta": av("rope.freq_base")}


# Hyperparameters a planner multiplies by: a forged or broken header must not turn into `-c -1` or a crash.
_NON_NEGATIVE = ("hidden", "ffn", "heads", "kv_heads", "head_dim_k", "head_dim_v", "context_length", "sliding_window",
                 "vocab_size")
_PER_LAYER = ("ffn_per_layer", "heads_per_layer", "kv_heads_per_layer")


def check_summary(header: GGUFHeader, s: Mapping[str, Any]) -> None:
    """Raise GGUFError unless the summary can be planned with: block_count present and positive, and no negative
    size, count or length (GGUF stores them as signed or unsigned integers; llama.cpp reads them unsigned)."""
    arch = header.architecture or "?"
    if not isinstance(s.get("layers"), int) or s["layers"] <= 0:
        raise GGUFError(f"{header.path}: {arch}.block_count (the number of layers) is missing or not a positive "
                        f"integer ({header.arch_value('block_count')!r}); re-convert the model with llama.cpp's "
                        "convert_hf_to_gguf.py")
    bad = [k for k in _NON_NEGATIVE if isinstance(s.get(k), int) and s[k] < 0]
    bad += [k for k in _PER_LAYER if any(v < 0 for v in (s.get(k) or ()))]
    experts = s.get("experts") or {}
    bad += [f"experts.{k}" for k, v in experts.items() if isinstance(v, int) and v < 0]
    if bad:
        raise GGUFError(f"{header.path}: negative values in the header ({', '.join(bad)}); a real model has none: "
                        "re-convert it with llama.cpp's convert_hf_to_gguf.py")
    _check_heads(header, s)


_RECONVERT = "re-convert the model with llama.cpp's convert_hf_to_gguf.py, which writes "


def _check_heads(header: GGUFHeader, s: Mapping[str, Any]) -> None:
    """Attention head counts a planner can size the KV cache from, as llama.cpp needs them; nothing invented.

    A model with attention needs attention.head_count > 0 and KV heads > 0 on some layer (zeros on others are the
    recurrent or MLP-only layers of a hybrid); a recurrent-only model (Mamba, RWKV: every layer recurrent) has none.
    On each layer the query heads must be a multiple of the KV heads: each KV head serves n_head / n_head_kv query
    heads (src/llama-hparams.cpp n_gqa(); ggml's mul_mat broadcasts K over the query heads only when
    ne[2] % ne[2] == 0, ggml/src/ggml.c ggml_can_mul_mat)."""
    arch = header.architecture or "?"
    layers = s["layers"]
    if s.get("recurrent_layers") == layers and not any(s.get("attention_kv_heads_per_layer") or ()) \
            and not (s.get("heads") and s.get("kv_heads")):
        return  # recurrent only: no attention heads to check
    heads = s.get("heads")
    if not heads:
        raise GGUFModelError(
            f"{arch}.attention.head_count is {'missing' if heads is None else heads} and the model has no recurrent "
            "layers: its attention, and so its KV cache, cannot be sized (llama.cpp cannot load it either)",
            _RECONVERT + "attention.head_count from num_attention_heads")
    if not s.get("kv_heads"):
        raise GGUFModelError(f"{arch}.attention.head_count_kv is 0 on every layer of an attention model: no layer "
                             "would have a KV cache", _RECONVERT + "attention.head_count_kv from num_key_value_heads")
    per_heads = list(s.get("heads_per_layer") or ()) or [heads] * layers
    per_kv = list(s.get("kv_heads_per_layer") or ()) or [s["kv_heads"]] * layers
    for il, (h, kv) in enumerate(zip(per_heads, per_kv)):
        if kv and (not h or h % kv):
            where = f" on layer {il}" if s.get("kv_heads_per_layer") or s.get("heads_per_layer") else ""
            raise GGUFModelError(
                f"{arch}.attention.head_count_kv ({kv}) does not divide attention.head_count ({h}){where}: each KV "
                "head serves head_count / head_count_kv query heads, so llama.cpp cannot run this attention",
                _RECONVERT + "attention.head_count_kv from num_key_value_heads, a divisor of num_attention_heads")
