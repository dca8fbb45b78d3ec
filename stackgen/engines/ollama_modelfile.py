"""Ollama's Modelfile grammar: a parser that follows Ollama's own state machine, a validator, and safe quoting.

Ported from ollama/ollama parser/parser.go (ParseFile, parseRuneForState, unquote, isValidCommand) and
api/types.go (FormatParams: PARAMETER keys and their Go types). Ollama cannot run on stackgen's CI machine, so every
generated Modelfile is checked here against this port instead (see reference/engines.md 2.3).

How values end, per the Go code: a value runs until a newline at which the text so far, trimmed, is a complete value:
a bare token, `"..."` or `\"\"\"...\"\"\"`. So a multi-line value ends at the first line that ends with three quotes;
that is why text containing three quotes cannot be written safely and is refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from stackgen.errors import RenderError

COMMANDS = ("from", "license", "template", "system", "adapter", "draft", "renderer", "parser", "parameter",
            "message", "requires")
ROLES = ("system", "user", "assistant")
INVALID_COMMAND = "command must be one of " + ", ".join(f'"{c}"' for c in COMMANDS)
INT_PARAMS = {"num_ctx", "num_batch", "num_gpu", "main_gpu", "num_thread", "draft_num_predict", "num_keep", "seed",
              "num_predict", "top_k", "repeat_last_n"}
FLOAT_PARAMS = {"top_p", "min_p", "typical_p", "temperature", "repeat_penalty", "presence_penalty",
                "frequency_penalty"}
BOOL_PARAMS = {"use_mmap"}
LIST_PARAMS = {"stop"}
PARAMETERS = INT_PARAMS | FLOAT_PARAMS | BOOL_PARAMS | LIST_PARAMS
# Accepted by `ollama create` with a warning and then ignored (parser.go deprecatedParameters).
DEPRECATED = {"penalize_newline", "low_vram", "f16_kv", "logits_all", "vocab_only", "use_mlock", "mirostat",
              "mirostat_tau", "mirostat_eta"}
GO_BOOLS = {"1", "t", "T", "TRUE", "true", "True", "0", "f", "F", "FALSE", "false", "False"}  # strconv.ParseBool
SEMVER = re.compile(r"^v?(0|[1-9]\d*)(\.(0|[1-9]\d*)(\.(0|[1-9]\d*))?)?(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$")


class ModelfileError(RenderError):
    """A Modelfile Ollama would reject (or stackgen could not write safely)."""


@dataclass(frozen=True)
class Command:
    name: str  # "model" for FROM, the parameter key for PARAMETER, else the lower-case instruction
    args: str
    line: int


# ---------------------------------------------------------------------------------------------- parsing


def parse(text: str) -> list[Command]:
    """Commands of a Modelfile, as Ollama's ParseFile reads them; ModelfileError where it would fail."""
    p = _Parser()
    for ch in text.lstrip("\ufeff"):
        p.feed(ch)
    p.finish()
    if not any(c.name == "model" for c in p.commands):
        raise ModelfileError("Modelfile: no FROM line")
    return p.commands


class _Parser:
    """parser.go's rune state machine; states: nil, name, value, parameter, message, comment."""

    def __init__(self) -> None:
        self.state, self.buf, self.line = "nil", "", 1
        self.name, self.role = "", ""
        self.commands: list[Command] = []

    def feed(self, ch: str) -> None:
        if ch in "\r\n":
            self.line += 1
        nxt = self._next_state(ch)
        if nxt != self.state:
            if self._transition(nxt, ch):
                return
            self.buf, self.state = "", nxt
        if ch.isprintable():
            self.buf += ch

    def _next_state(self, ch: str) -> str:
        s, space, newline = self.state, ch in " \t", ch in "\r\n"
        if s == "nil":
            return "comment" if ch == "#" else "nil" if space or newline else "name"
        if s == "name":
            return "name" if _alpha(ch) else "value" if space else self._fail(INVALID_COMMAND)
        if s == "value":
            return "nil" if space or newline else "value"
        if s in ("parameter", "message"):
            ok = _alpha(ch) or (s == "parameter" and (ch.isdigit() and ch.isascii() or ch == "_"))
            return s if ok else "value" if space else self._fail("unexpected character")
        return "nil" if newline else "comment"

    def _transition(self, nxt: str, ch: str) -> bool:
        """Handle leaving a state; True when the rune was consumed (a value continues)."""
        if self.state == "name":
            return self._end_name(nxt)
        if self.state == "parameter":
            self.name = self.buf
        elif self.state == "message":
            if self.buf not in ROLES:
                self._fail('message role must be one of "system", "user", or "assistant"')
            self.role = self.buf
        elif self.state == "value":
            value = _unquote(self.buf.strip())
            if value is None or ch in " \t":
                self.buf += ch
                return True
            self._emit(value)
        return False

    def _end_name(self, nxt: str) -> bool:
        word = self.buf.lower()
        if word not in COMMANDS:
            self._fail(INVALID_COMMAND)
        self.name = "model" if word == "from" else word
        self.buf, self.state = "", {"parameter": "parameter", "message": "message"}.get(word, nxt)
        return True

    def _emit(self, value: str) -> None:
        if self.role:
            value, self.role = f"{self.role}: {value}", ""
        self.commands.append(Command(self.name, value, self.line))

    def finish(self) -> None:
        if self.state == "value":
            value = _unquote(self.buf.strip())
            if value is None:
                self._fail("unexpected end of file inside a quoted value")
            self._emit(value)
        elif self.state not in ("nil", "comment"):
            self._fail("unexpected end of file")

    def _fail(self, message: str):
        raise ModelfileError(f"Modelfile line {self.line}: {message}")


def _alpha(ch: str) -> bool:
    return ch.isascii() and ch.isalpha()


def _unquote(s: str) -> str | None:
    if s.startswith('"""'):
        return s[3:-3] if len(s) >= 6 and s.endswith('"""') else None
    if s.startswith('"'):
        return s[1:-1] if len(s) >= 2 and s.endswith('"') else None
    return s


# ---------------------------------------------------------------------------------------------- validation


def validate(text: str) -> list[Command]:
    """Parse, then check what `ollama create` checks: PARAMETER keys and types, REQUIRES semver."""
    commands = parse(text)
    for cmd in commands:
        if cmd.name == "requires" and not SEMVER.match(cmd.args):
            raise ModelfileError(f"Modelfile line {cmd.line}: REQUIRES must be a valid semver (e.g. 0.14.0)")
        if cmd.name not in COMMANDS and cmd.name != "model":
            check_parameter(cmd.name, cmd.args, cmd.line)
    return commands


def check_parameter(key: str, value: str, line: int = 0) -> None:
    where = f"Modelfile line {line}: " if line else ""
    if key in DEPRECATED:
        return
    if key not in PARAMETERS:
        raise ModelfileError(f"{where}unknown parameter '{key}'")
    if key in INT_PARAMS and not re.fullmatch(r"[+-]?\d+", value):
        raise ModelfileError(f"{where}invalid int value {value!r} for {key}")
    if key in FLOAT_PARAMS and not _is_go_float(value):
        raise ModelfileError(f"{where}invalid float value {value!r} for {key}")
    if key in BOOL_PARAMS and value not in GO_BOOLS:
        raise ModelfileError(f"{where}invalid bool value {value!r} for {key}")


def _is_go_float(value: str) -> bool:
    if "_" in value or not value.strip() == value:
        return False
    try:
        float(value)
    except ValueError:
        return False
    return True


# ---------------------------------------------------------------------------------------------- writing


def quote(value: str, what: str) -> str:
    """The safest form Ollama reads back unchanged: bare when it can, else \"\"\"...\"\"\"."""
    if '"""' in value:
        raise ModelfileError(f'{what}: the text contains """, which would end the Modelfile value early')
    if any(not (c.isprintable() or c in "\t\n") for c in value):
        # Ollama's parser silently drops unprintable characters; refusing beats a silently different prompt.
        raise ModelfileError(f"{what}: the text contains control characters a Modelfile cannot hold")
    plain = bool(value) and value.strip() == value and not value.startswith('"') and "\n" not in value
    return value if plain and "\t" not in value else f'"""{value}"""'
