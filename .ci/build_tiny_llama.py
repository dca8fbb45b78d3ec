#!/usr/bin/env python3
"""Build a tiny random-weight Llama in Hugging Face safetensors format, deterministically.

Usage: python build_tiny_llama.py OUT_DIR

Needs torch, transformers and tokenizers (the vLLM CI venv has all three).
What it writes (about 2.3 MB):
  - a byte-level BPE tokenizer with 1024 tokens, trained with `tokenizers` on a
    corpus generated here from a fixed seed (no download, no file outside this script),
  - LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, head_dim=32,
    max_position_embeddings=512), weights from torch.manual_seed(0), float32,
  - a ChatML chat template, generation_config.json.
Head size 32 is one that vLLM's CPU attention accepts (16 is not).
The same versions of torch/transformers/tokenizers give byte-identical files.
The folder is built beside OUT_DIR and renamed into place, so OUT_DIR is complete or absent.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import sys
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAYON_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SEED = 0
VOCAB_SIZE = 1024
SPECIAL_TOKENS = ["<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

PARAGRAPHS = [
    "The capital of France is Paris. The capital of Italy is Rome. The capital of Spain is Madrid.",
    "A language model reads a sequence of tokens and predicts the next token. It is served by an "
    "inference server that listens on a port and answers completion requests over HTTP.",
    "llama.cpp runs quantized GGUF models on the CPU. vLLM batches many requests and pages the KV cache. "
    "MLX runs models on Apple silicon. Ollama wraps llama.cpp with a model registry.",
    "Once upon a time there was a small model with two layers. It knew very little, but it answered "
    "quickly, and the tests that asked it questions were happy to get any answer at all.",
    "def main():\n    print('hello, world')\n    return 0\n\nif __name__ == '__main__':\n    main()\n",
    "{\"model\": \"tiny\", \"prompt\": \"Hello\", \"max_tokens\": 8, \"temperature\": 0}",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 16 32 64 128 256 512 1024 2048 4096 8192",
]

WORDS = (
    "the a an of to in on at for with from by and or but not is are was were be been has have had "
    "do does did will would can could should may might must this that these those it its they them "
    "he she we you i my your our their who what when where why how which all any some many few more "
    "most other such only own same so than too very just now then here there up down out over under "
    "again further once model token server request response memory cache batch context prompt answer "
    "question engine quantized weights layer attention head vector matrix compute device thread core "
    "stack config profile template render plan deploy service health port host socket container image "
    "time fast slow small large tiny big good bad new old first last long short high low next early late "
    "city river mountain ocean forest garden house street market school library music story book letter "
    "apple bread water coffee tea cheese paper stone glass metal light sound color green blue red yellow "
    "run walk read write speak listen think learn build test check start stop wait load save send take "
    "make give find keep tell ask work call try need feel become leave put mean let begin seem help show"
).split()


def corpus() -> list[str]:
    rng = random.Random(SEED)
    lines = list(PARAGRAPHS)
    for _ in range(6000):
        n = rng.randint(4, 14)
        words = [rng.choice(WORDS) for _ in range(n)]
        sentence = " ".join(words)
        sentence = sentence[0].upper() + sentence[1:] + rng.choice([".", ".", ".", "?", "!", ","])
        if rng.random() < 0.1:
            sentence += f" {rng.randint(0, 9999)}"
        lines.append(sentence)
    return lines


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    if tok.get_vocab_size() != VOCAB_SIZE:
        raise SystemExit(f"tokenizer has {tok.get_vocab_size()} tokens, wanted {VOCAB_SIZE}")
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    return tok


def build(out: Path) -> None:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(SEED)
    random.seed(SEED)

    tok = build_tokenizer()
    ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
        chat_template=CHAT_TEMPLATE,
        model_max_length=512,
    )

    config = LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=512,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        bos_token_id=ids["<s>"],
        eos_token_id=ids["</s>"],
        pad_token_id=ids["<pad>"],
    )
    model = LlamaForCausalLM(config).to(torch.float32).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=ids["<s>"],
        eos_token_id=[ids["</s>"], ids["<|im_end|>"]],
        pad_token_id=ids["<pad>"],
        do_sample=False,
    )

    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp)
    hf_tok.save_pretrained(tmp)

    # sanity: loads back, chat template renders, generates without error
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t2 = AutoTokenizer.from_pretrained(tmp)
    m2 = AutoModelForCausalLM.from_pretrained(tmp).eval()
    text = t2.apply_chat_template([{"role": "user", "content": "Hello"}], tokenize=False, add_generation_prompt=True)
    assert text.startswith("<s><|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"), text
    enc = t2("The capital of France is", return_tensors="pt")
    assert enc["input_ids"][0, 0].item() == ids["<s>"], "BOS not prepended"
    with torch.no_grad():
        gen = m2.generate(**enc, max_new_tokens=4, do_sample=False)
    assert gen.shape[1] == enc["input_ids"].shape[1] + 4 or gen.shape[1] > enc["input_ids"].shape[1]
    if not list(tmp.glob("*.safetensors")):
        raise SystemExit("no safetensors written")

    for p in tmp.iterdir():
        p.chmod(0o644)  # save_pretrained writes the safetensors 0600; containers/other users read it
    digest = hashlib.sha256()
    files = {}
    for p in sorted(tmp.iterdir()):
        if p.is_file():
            h = hashlib.sha256(p.read_bytes()).hexdigest()
            files[p.name] = h
            digest.update(f"{p.name} {h}\n".encode())
    (tmp / "stackgen-tiny-llama.json").write_text(
        json.dumps({"builder": "stackgen .ci/build_tiny_llama.py", "seed": SEED, "files": files,
                    "digest": digest.hexdigest()}, indent=2, sort_keys=True) + "\n"
    )
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    size = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    print(f"tiny llama: {out} ({size / 1e6:.1f} MB, digest {digest.hexdigest()[:16]})")


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    build(Path(argv[1]).resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
