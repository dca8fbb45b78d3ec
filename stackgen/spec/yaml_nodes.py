"""Safe YAML loading that keeps the line:col of every node and rejects what plain safe_load accepts silently.

yaml.safe_load keeps the last of duplicate keys, reads ``no`` as False and ``1.10`` as 1.1, and forgets where a
value came from. Stack files are small and hand-written, so we load with the YAML 1.2 core idea in mind: duplicate
keys and explicit tags are errors, and every value keeps its position for error messages.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

Path = tuple[str | int, ...]

# libyaml's composer keeps the same node marks and is ~10x faster than the pure-Python one on the profiles.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

_RESOLVER = yaml.resolver.Resolver()

_CORE_TAGS = {
    "tag:yaml.org,2002:str",
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:null",
    "tag:yaml.org,2002:map",
    "tag:yaml.org,2002:seq",
}
# YAML 1.1 booleans that are strings in YAML 1.2; a stack value like `no` must stay the text "no".
_YAML11_ONLY_BOOLS = {"y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "on", "On", "ON", "off", "Off", "OFF"}


@dataclass(frozen=True)
class Mark:
    line: int  # 1-based
    col: int  # 1-based


class YamlError(ValueError):
    def __init__(self, message: str, mark: Mark, path: Path = ()):
        super().__init__(message)
        self.message = message
        self.mark = mark
        self.path = path


@dataclass
class Document:
    """Plain python data plus the position of every key and value in it."""

    data: Any
    marks: dict[Path, Mark]  # position of each value
    key_marks: dict[Path, Mark] = field(default_factory=dict)  # position of the key of each mapping entry

    def mark_for(self, path: Path, key: bool = False) -> Mark:
        """The position of the value at `path` (or of its key), else of its nearest ancestor that exists."""
        path = tuple(path)
        table = self.key_marks if key else self.marks
        while path not in table and path:
            path = path[:-1]
            table = self.key_marks if key and path in self.key_marks else self.marks
        return table.get(path, Mark(1, 1))


def _mark(node: Node) -> Mark:
    return Mark(node.start_mark.line + 1, node.start_mark.column + 1)


def load_document(text: str) -> Document:
    """Parse one YAML document into plain data with positions; raise YamlError for anything we refuse."""
    if "\x00" in text:
        idx = text.index("\x00")
        line = text.count("\n", 0, idx) + 1
        col = idx - (text.rfind("\n", 0, idx) + 1) + 1
        raise YamlError("NUL byte in file", Mark(line, col))
    try:
        nodes = list(yaml.compose_all(text, Loader=_LOADER))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        pos = Mark(mark.line + 1, mark.column + 1) if mark else Mark(1, 1)
        raise YamlError(f"invalid YAML: {exc.problem or exc.context}", pos) from None
    except yaml.YAMLError as exc:  # e.g. reader errors on control characters
        raise YamlError(f"invalid YAML: {exc}", Mark(1, 1)) from None
    if len(nodes) > 1:
        raise YamlError("more than one YAML document; a stack file holds one", _mark(nodes[1]))
    marks: dict[Path, Mark] = {}
    if not nodes:
        return Document(None, marks)
    data = _convert(nodes[0], (), marks)
    key_marks = marks.pop(_KEYS, {})  # type: ignore[call-overload]
    return Document(data, marks, key_marks)


_KEYS: Path = ("\x00keys",)  # a path no YAML document can produce (NUL is refused above)


def _convert(node: Node, path: Path, marks: dict[Path, Mark], seen: set[int] | None = None) -> Any:
    seen = set() if seen is None else seen
    if id(node) in seen:
        # Aliases let a few lines expand to gigabytes ("billion laughs"); stack files never need them.
        raise YamlError("YAML aliases (*name) are not allowed; write the value out", _mark(node), path)
    seen.add(id(node))
    marks[path] = _mark(node)
    if node.tag not in _CORE_TAGS:
        raise YamlError(f"YAML tag {node.tag!r} is not allowed; write a plain value", _mark(node), path)
    if isinstance(node, MappingNode):
        return _convert_mapping(node, path, marks, seen)
    if isinstance(node, SequenceNode):
        return [_convert(child, path + (i,), marks, seen) for i, child in enumerate(node.value)]
    assert isinstance(node, ScalarNode)
    return _convert_scalar(node)


def _convert_mapping(node: MappingNode, path: Path, marks: dict[Path, Mark], seen: set[int]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key_node, value_node in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            raise YamlError("YAML merge keys (<<) are not allowed; write the keys out", _mark(key_node), path)
        if not isinstance(key_node, ScalarNode):
            raise YamlError("mapping keys must be plain text", _mark(key_node), path)
        key = key_node.value
        key_marks = marks.setdefault(_KEYS, {})  # type: ignore[arg-type]
        if key in out:
            first = key_marks[path + (key,)]
            raise YamlError(
                f"duplicate key {key!r} (first defined at line {first.line}); remove one of them",
                _mark(key_node),
                path + (key,),
            )
        key_marks[path + (key,)] = _mark(key_node)
        out[key] = _convert(value_node, path + (key,), marks, seen)
    return out


def _convert_scalar(node: ScalarNode) -> Any:
    if node.style:  # quoted: always a string
        return node.value
    if node.value in _YAML11_ONLY_BOOLS:
        return node.value
    value = node.value
    resolved = _RESOLVER.resolve(ScalarNode, node.value, (True, False))
    constructor = {
        "tag:yaml.org,2002:int": _int_or_text,
        "tag:yaml.org,2002:float": _float_or_text,
        "tag:yaml.org,2002:bool": lambda v: v.lower() == "true",
        "tag:yaml.org,2002:null": lambda v: None,
    }.get(resolved)
    return constructor(value) if constructor else value


def _int_or_text(text: str) -> Any:
    # YAML 1.1 reads 012 as octal 10 and 1_000 as 1000; keep anything that is not a plain decimal as text.
    plain = text.lstrip("+-")
    if plain.isdigit() and not (len(plain) > 1 and plain.startswith("0")):
        return int(text)
    return text


def _float_or_text(text: str) -> Any:
    try:
        return float(text)
    except ValueError:
        return text  # .inf / .nan forms and sexagesimal: leave to the schema to reject


def dump(data: Any) -> str:
    """Deterministic YAML output (sorted keys off: callers order their dicts; strings that look like other
    types are quoted by PyYAML's representer)."""
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True, width=120)
