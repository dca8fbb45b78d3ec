"""The one bounded reader for the YAML and JSON files stackgen reads that a person or another process wrote.

stack.yaml, the profiles beside it (profiles/*.yaml), stack.lock, the state files under .stackgen/, the calibration
and bandwidth cache in the config home, a recorded host (--host-facts), a render's manifest and journal, a bench
--json-schema and a Hugging Face folder's JSON files are all read through here: each is refused before it is parsed
when it is larger than MAX_BYTES (or, for YAML, longer than MAX_LINES), and JSON nested deeper than Python's
recursion limit is an error naming the file instead of a RecursionError. A 25 MB, 600,000-line models.yaml in a
stack's profiles/ folder took 77 s and 4.5 GB of RAM to be refused by the schema; YAML aliases ("billion laughs")
are refused by yaml_nodes itself, whose composer links an alias to its anchor's node without copying it.

The limits are far above any real file: the largest built-in profile (profiles/models.yaml) is 38 KB and 644 lines,
the largest flag table 30 KB; the 10,000-service benchmark stack is 10,003 lines.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MAX_BYTES = 8 * 2**20
# YAML is parsed per node: 200,000 one-key lines took 5 s in libyaml's composer alone, 600,000 profile lines 77 s.
MAX_LINES = 100_000


class DataFileError(ValueError):
    """A file refused before (or instead of) parsing: `message` says what is wrong with it, `fix` what to do.
    A ValueError, so a caller that treats an unparsable file as damaged treats this one so too."""

    def __init__(self, path: str | Path, message: str, fix: str):
        super().__init__(f"{path}: {message}" + (f" ({fix})" if fix else ""))
        self.path, self.message, self.fix = str(path), message, fix


def read_bytes(path: str | Path, what: str, fix: str, max_bytes: int | None = None) -> bytes:
    """At most `max_bytes` (MAX_BYTES) of the file; DataFileError (naming `what`, the limit and `fix`) when it holds
    more. OSError as open() raises it."""
    max_bytes = MAX_BYTES if max_bytes is None else max_bytes
    with open(path, "rb") as fh:
        raw = fh.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise DataFileError(path, f"{what} is larger than {_size(max_bytes)}, far more than any real one; "
                            "stackgen does not read it", fix)
    return raw


def read_text(path: str | Path, what: str, fix: str, max_bytes: int | None = None) -> str:
    """The file as UTF-8 text (UnicodeDecodeError as bytes.decode raises it), bounded as read_bytes."""
    return read_bytes(path, what, fix, max_bytes).decode("utf-8")


def check_lines(path: str | Path, text: str, what: str, fix: str, max_lines: int | None = None) -> None:
    """DataFileError when `text` has more than `max_lines` (MAX_LINES) lines."""
    max_lines = MAX_LINES if max_lines is None else max_lines
    lines = text.count("\n") + 1
    if lines > max_lines:
        raise DataFileError(path, f"{what} has {lines:,} lines, more than {max_lines:,}; stackgen does not parse it",
                            fix)


def parse_json(text: str | bytes, path: str | Path, what: str, fix: str) -> Any:
    """json.loads, with nesting past the recursion limit a DataFileError instead of a RecursionError (a traceback).
    json.JSONDecodeError (a ValueError) as json.loads raises it."""
    try:
        return json.loads(text)
    except RecursionError:
        raise DataFileError(path, f"{what} is nested too deeply to be read", fix) from None


def load_json(path: str | Path, what: str, fix: str, max_bytes: int | None = None) -> Any:
    """A JSON file read through read_text and parse_json."""
    return parse_json(read_text(path, what, fix, max_bytes), path, what, fix)


def load_yaml(path: str | Path, what: str, fix: str):
    """A YAML file as a yaml_nodes.Document (YamlError for what yaml_nodes refuses: aliases, tags, duplicate keys),
    refused unparsed past MAX_BYTES or MAX_LINES."""
    from stackgen.spec import yaml_nodes

    text = read_text(path, what, fix)
    check_lines(path, text, what, fix)
    return yaml_nodes.load_document(text)


def _size(n: int) -> str:
    return f"{n // 2**20} MiB" if n % 2**20 == 0 else f"{n // 1024} KiB" if n % 1024 == 0 else f"{n:,} bytes"
