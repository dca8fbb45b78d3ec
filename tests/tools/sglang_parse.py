"""Run SGLang's own `python -m sglang.launch_server` argument parser without starting a server (run it with the
SGLang venv's python, provisioned by .ci/provision.sh: sglang installed --no-deps plus only what
`sglang.srt.server_args` imports at module level, CPU torch; no GPU needed).

    echo '[["--model-path", "M", "--flag", "v"], ...]' | $STACKGEN_SGLANG_PY tests/tools/sglang_parse.py check
        -> JSON list, one {"ok": bool, "error": str} per argv (the import takes seconds: check many at once)
    $STACKGEN_SGLANG_PY tests/tools/sglang_parse.py dump    -> JSON {flag: nargs} of launch_server's parser

The parser is built the way sglang/launch_server.py builds it (sglang 0.5.23: `prepare_server_args` in
srt/server_args.py makes an argparse.ArgumentParser, ServerArgs.add_cli_args(parser), parser.parse_args(argv)).
ServerArgs.from_cli_args is not run: its resolution hooks measure the GPU (get_device_memory_capacity), so only the
argparse level (flag names, value types, choices) is checked. `dump` is what profiles/engines/sglang.yaml records.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys


def parser() -> argparse.ArgumentParser:
    from sglang.srt.server_args import ServerArgs

    p = argparse.ArgumentParser(prog="sglang.launch_server")
    ServerArgs.add_cli_args(p)
    return p


def check_one(p: argparse.ArgumentParser, argv: list[str]) -> dict:
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            p.parse_args(argv)  # argparse exits 2 on unknown flags, bad types and values outside `choices`
    except SystemExit as exc:
        return {"ok": exc.code in (0, None), "error": err.getvalue().strip()[-2000:]}
    return {"ok": True, "error": ""}


def check() -> int:
    p = parser()
    argvs = json.load(sys.stdin)
    print(json.dumps([check_one(p, argv) for argv in argvs]))
    return 0


def dump() -> int:
    p = parser()
    table = {flag: _arity(action) for action in p._actions for flag in action.option_strings}
    print(json.dumps(dict(sorted(table.items())), indent=1))
    return 0


def _arity(action):
    """argparse's own count: None means one value; store_true/BooleanOptionalAction/help say 0."""
    if action.nargs is None:
        return 1
    return action.nargs if isinstance(action.nargs, str) else int(action.nargs)


if __name__ == "__main__":
    sys.exit(dump() if sys.argv[1:2] == ["dump"] else check())
