#!/usr/bin/env python3
"""Check that an argv is accepted by `vllm serve` (vLLM 0.32.0) without starting anything.

Usage: $STACKGEN_VLLM_PY .ci/vllm_parse_args.py [--json] [--engine-args] [serve] MODEL [--flag value ...]

Builds the same parser `vllm serve` builds (vllm.entrypoints.cli.main: a FlexibleArgumentParser
with the `serve` subcommand from ServeSubcommand.subparser_init, i.e.
vllm.entrypoints.launchers.cli_args.make_arg_parser), parses `serve ARGV`, then runs the checks
`vllm serve` runs before loading a model (validate_parsed_serve_args). No model is read, no port
opened, no engine started. --engine-args also builds AsyncEngineArgs.from_cli_args(args), whose
__post_init__ checks the model name (a local folder that exists, or a valid hub repo id): use it
only when MODEL is real.
Exit 0 and "ok" when the argv parses; exit 2 with argparse's message on stderr for an unknown or
malformed flag; exit 1 with the error for a failed check. --json prints the parsed arguments
(non-default values only) as JSON instead of "ok".
(In vLLM 0.32.0 the old vllm.entrypoints.openai.cli_args module is gone: the parser lives in
vllm.entrypoints.launchers.cli_args, FlexibleArgumentParser in vllm.utils.argparse_utils.)
"""
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")


def main(argv: list[str]) -> int:
    as_json = engine_args = False
    while argv[:1] in (["--json"], ["--engine-args"]):
        if argv[0] == "--json":
            as_json = True
        else:
            engine_args = True
        argv = argv[1:]
    if argv[:1] == ["vllm"]:
        argv = argv[1:]
    if argv[:1] == ["serve"]:
        argv = argv[1:]

    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.entrypoints.cli.serve import ServeSubcommand
    from vllm.entrypoints.launchers.cli_args import validate_parsed_serve_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser(prog="vllm", description="vLLM CLI")
    subparsers = parser.add_subparsers(required=False, dest="subparser")
    serve_parser = ServeSubcommand().subparser_init(subparsers)
    args = parser.parse_args(["serve", *argv])  # argparse exits 2 with its message on error
    try:
        if getattr(args, "model_tag", None) is not None:
            args.model = args.model_tag
        validate_parsed_serve_args(args)
        if engine_args:
            AsyncEngineArgs.from_cli_args(args)
    except Exception as e:  # noqa: BLE001 - report any check failure as such
        print(f"vllm serve: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1

    if as_json:
        defaults = vars(serve_parser.parse_args([]))
        changed = {k: v for k, v in vars(args).items()
                   if k not in ("dispatch_function",) and defaults.get(k, object()) != v}
        print(json.dumps(changed, default=str, sort_keys=True))
    else:
        print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
