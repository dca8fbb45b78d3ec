"""Run vLLM's own `vllm serve` argument parser without starting a server (run it with vLLM's python).

    echo '[["serve", "MODEL", "--flag", "v"], ...]' | $STACKGEN_VLLM_PY tests/tools/vllm_parse.py check
        -> JSON list, one {"ok": bool, "error": str} per argv (vLLM imports take seconds: check many at once)
    $STACKGEN_VLLM_PY tests/tools/vllm_parse.py dump    -> JSON {flag: nargs} of `vllm serve`

The parser is built the way the `vllm` CLI builds it (FlexibleArgumentParser + the serve subcommand's
subparser_init, which calls make_arg_parser); after parsing, the serve subcommand's own validate() runs too.
`dump` is what profiles/engines/vllm.yaml records for this version.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys


def serve_parser():
    from vllm.entrypoints.cli.serve import ServeSubcommand
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    root = FlexibleArgumentParser(prog="vllm")
    sub = root.add_subparsers(dest="subparser")
    cmd = ServeSubcommand()
    parser = cmd.subparser_init(sub)
    return root, parser, cmd


def check_one(root, cmd, argv: list[str]) -> dict:
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            args = root.parse_args(argv)  # argparse exits 2 on unknown flags and bad values
            cmd.validate(args)
    except SystemExit as exc:
        return {"ok": exc.code in (0, None), "error": err.getvalue().strip()}
    except Exception as exc:  # noqa: BLE001 - validate() raises plain exceptions; report them as a rejection
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    return {"ok": True, "error": ""}


def check() -> int:
    root, _, cmd = serve_parser()
    argvs = json.load(sys.stdin)
    print(json.dumps([check_one(root, cmd, argv) for argv in argvs]))
    return 0


def dump() -> int:
    _, parser, _ = serve_parser()
    table = {flag: _arity(action) for action in parser._actions for flag in action.option_strings}
    print(json.dumps(dict(sorted(table.items())), indent=1))
    return 0


def _arity(action):
    """argparse's own count: None means one value; store_true/BooleanOptionalAction/help say 0."""
    if action.nargs is None:
        return 1
    return action.nargs if isinstance(action.nargs, str) else int(action.nargs)


if __name__ == "__main__":
    sys.exit(dump() if sys.argv[1:2] == ["dump"] else check())
