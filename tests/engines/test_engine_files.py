"""Per-engine files (Ollama Modelfile, ollama.env, create.sh; MLX wired-limit.sh) and the Modelfile grammar port.

Ollama itself cannot run on the CI machine (no binary is obtainable offline, see reference/real-engines.md), so
every generated Modelfile is checked against stackgen.engines.ollama_modelfile, a line-by-line port of Ollama's
parser/parser.go state machine and api/types.go parameter types; the parser tests below pin that port's behaviour
to what the Go code does (values end at a newline where the text is a complete value, unprintables are dropped...).
"""

from __future__ import annotations

import pytest

from stackgen.render.engine_files import files_for
from stackgen.engines.ollama import Ollama
from stackgen.errors import RenderError, SpecError
from stackgen.engines.ollama_modelfile import ModelfileError, parse, quote, validate
from stackgen.render.artifact import RenderContext
from tools.stacks import EXTRA_STACKS, plan_for

CTX = RenderContext("stack.yaml")


def ollama_files(tmp_path, text=EXTRA_STACKS["ollama-tuned"]):
    plan = plan_for(tmp_path, text)
    sp = plan.services[0]
    return sp, {a.path: a for a in files_for(sp, CTX, stack_dir=tmp_path)}


def test_ollama_gets_modelfile_env_and_create_script(tmp_path):
    sp, files = ollama_files(tmp_path)
    assert sorted(files) == ["chat/Modelfile", "chat/create.sh", "chat/ollama.env"]
    assert files["chat/create.sh"].mode == 0o755
    assert "OLLAMA_HOST=127.0.0.1:11434\nexport OLLAMA_HOST\nexec ollama create stackgen-chat -f Modelfile\n" in \
        files["chat/create.sh"].content
    assert "OLLAMA_MAX_QUEUE=64\n" in files["chat/ollama.env"].content


def test_modelfile_pins_the_plan_and_passes_the_grammar(tmp_path):
    sp, files = ollama_files(tmp_path)
    commands = validate(files["chat/Modelfile"].content)
    params = [(c.name, c.args) for c in commands if c.name not in ("model", "system", "template")]
    assert params == Ollama().modelfile_parameters(sp)
    assert ("model", "llama3.1:8b") in [(c.name, c.args) for c in commands]
    assert [c.args for c in commands if c.name == "system"] == ["You are terse.\nAnswer in one line."]
    assert not [c for c in commands if c.name == "template"]


def test_template_comes_from_the_chat_template_file(tmp_path):
    (tmp_path / "tmpl.gotmpl").write_text('{{ if .System }}<|system|>{{ .System }}{{ end }}\n<|user|>"{{ .Prompt }}"\n')
    text = EXTRA_STACKS["ollama-tuned"].replace("engine: ollama\n", "engine: ollama\n    chat_template: tmpl.gotmpl\n")
    _, files = ollama_files(tmp_path, text)
    template = [c.args for c in validate(files["chat/Modelfile"].content) if c.name == "template"]
    assert template == ['{{ if .System }}<|system|>{{ .System }}{{ end }}\n<|user|>"{{ .Prompt }}"']


def test_system_without_system_is_absent(tmp_path):
    text = EXTRA_STACKS["ollama-tuned"].replace('    system: "You are terse.\\nAnswer in one line."\n', "")
    _, files = ollama_files(tmp_path, text)
    assert "SYSTEM" not in files["chat/Modelfile"].content


def test_triple_quotes_in_system_are_refused(tmp_path):
    text = EXTRA_STACKS["ollama-tuned"].replace("You are terse.", 'Say \\"\\"\\"hi')
    with pytest.raises(RenderError, match=r'services.chat.system: .*contains """'):
        ollama_files(tmp_path, text)


def test_a_bad_parameter_override_is_refused_before_writing(tmp_path):
    text = EXTRA_STACKS["ollama-tuned"].replace("temperature: 0.2", "temperature: warm")
    # refused when the stack is read (at its line), so nothing is planned or written
    with pytest.raises(SpecError, match=r"stack.yaml:\d+:\d+: services.chat.overrides.temperature: invalid float "
                                        "value 'warm'"):
        ollama_files(tmp_path, text)


def test_mlx_wired_limit_script_only_when_the_plan_needs_it(tmp_path):
    small = "version: 1\nhardware: m4-max-128gb\nservices:\n  dev: {model: qwen2.5-7b-instruct, engine: mlx}\n"
    big = ("version: 1\nhardware: m4-16gb\nworkload: {context_tokens: 32768}\n"
           "services:\n  dev: {model: llama-3.1-8b-instruct, engine: mlx, quant: 8bit}\n")
    assert files_for(plan_for(tmp_path / "s", small).services[0], CTX) == []
    sp = plan_for(tmp_path / "b", big).services[0]
    [script] = files_for(sp, CTX)
    assert script.path == "dev/wired-limit.sh" and script.mode == 0o755
    assert f"sudo sysctl iogpu.wired_limit_mb={-(-sp.memory.total_bytes // 2**20)}\n" in script.content


def test_other_engines_have_no_extra_files(tmp_path):
    sp = plan_for(tmp_path, EXTRA_STACKS["llama-kvq-offload"]).services[0]
    assert files_for(sp, CTX) == []


# ---------------------------------------------------------------------------------------------- grammar port


def test_parser_reads_every_value_form():
    text = ('# comment\nfrom ./m.gguf\nPARAMETER stop "<|eot|>"\nPARAMETER stop <|end|>\n'
            'TEMPLATE """line one\n  line "two"\n"""\nMESSAGE user hello there\nREQUIRES 0.14.0\n')
    got = [(c.name, c.args) for c in validate(text)]
    assert got == [("model", "./m.gguf"), ("stop", "<|eot|>"), ("stop", "<|end|>"),
                   ("template", 'line one\n  line "two"\n'), ("message", "user: hello there"),
                   ("requires", "0.14.0")]


def test_a_multiline_value_ends_at_the_first_line_ending_in_triple_quotes():
    # Go's parser closes the value there, so the rest becomes an invalid instruction.
    with pytest.raises(ModelfileError, match="command must be one of"):
        parse('FROM x\nSYSTEM """a"""\nb"""\n')


@pytest.mark.parametrize("text, error", [
    ("PARAMETER num_ctx 8\n", "no FROM line"),
    ("FROM x\nFOO bar\n", "command must be one of"),
    ("FROM x\nMESSAGE robot hi\n", "message role must be one of"),
    ("FROM x\nSYSTEM \"\"\"never closed\n", "unexpected end of file"),
    ("FROM x\nPARAMETER num_cxt 8\n", "unknown parameter 'num_cxt'"),
    ("FROM x\nPARAMETER num_ctx 8k\n", "invalid int value '8k'"),
    ("FROM x\nPARAMETER use_mmap yes\n", "invalid bool value 'yes'"),
    ("FROM x\nREQUIRES latest\n", "REQUIRES must be a valid semver"),
])
def test_validator_rejects_what_ollama_rejects(text, error):
    with pytest.raises(ModelfileError, match=error):
        validate(text)


def test_deprecated_parameters_are_accepted_like_ollama_does():
    assert [c.name for c in validate("FROM x\nPARAMETER mirostat 1\n")] == ["model", "mirostat"]


@pytest.mark.parametrize("value", ["plain", "two words", " padded ", 'ends with "quote"', "multi\nline\n",
                                   "tab\there", '"starts quoted'])
def test_quote_round_trips_through_the_parser(value):
    [_, cmd] = parse(f"FROM x\nSYSTEM {quote(value, 'system')}\n")
    assert cmd.args == value


@pytest.mark.parametrize("value", ['a """ b', "bell\x07"])
def test_quote_refuses_what_cannot_round_trip(value):
    with pytest.raises(ModelfileError):
        quote(value, "system")


def test_up_writes_the_modelfile_render_writes(tmp_path):
    """One Modelfile builder: `up` (Engine.setup_steps) and `render` produce the same bytes, chat template and a
    multi-line SYSTEM included, and `up` then pulls the registry model and creates the tuned one from that file."""
    (tmp_path / "tmpl.gotmpl").write_text("{{ .System }}\n<|user|>{{ .Prompt }}\n")
    text = EXTRA_STACKS["ollama-tuned"].replace("engine: ollama\n", "engine: ollama\n    chat_template: tmpl.gotmpl\n")
    sp, files = ollama_files(tmp_path, text)
    state = tmp_path / "state"
    state.mkdir()
    steps = Ollama().setup_steps(sp, "/opt/ollama", state, tmp_path / "stack.yaml")
    written = (state / "chat.Modelfile").read_text(encoding="utf-8")
    assert written == files["chat/Modelfile"].content
    assert "TEMPLATE" in written and "SYSTEM" in written
    assert steps == [["/opt/ollama", "pull", "llama3.1:8b"],
                     ["/opt/ollama", "create", "stackgen-chat", "-f", str(state / "chat.Modelfile")]]
