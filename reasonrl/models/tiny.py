"""Tiny checkpoints of real architectures, made here (nothing can be downloaded).

Tests, the demo and benchmarks build small Llama/Qwen2/Qwen3 models with a small byte-level BPE
tokenizer and a ChatML chat template, and save them as ordinary Hugging Face checkpoint
directories, which every other part of reasonrl then loads like a real one.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Iterable

import torch

from reasonrl.models.config import ModelConfig
from reasonrl.models.loader import publish_dir, save_model
from reasonrl.models.model import DecoderLM, RMSNorm
from reasonrl.models.tokenizer import Tokenizer

CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
ARCH = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}


# Qwen2's pre-tokenization (each digit apart, then bytes). transformers 5 builds a `Qwen2Tokenizer`
# for qwen2-family checkpoints and applies these rules whatever tokenizer.json says, so a tokenizer
# that did otherwise would give other ids there than here.
QWEN_SPLIT = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"""
              r"""|\s+(?!\S)|\s+""")


def make_tokenizer(corpus: Iterable[str], vocab_size: int = 512, extra_special_tokens: Iterable[str] = (),
                   chat_template: str = CHATML) -> Tokenizer:
    """A byte-level BPE tokenizer trained on `corpus`, with ChatML special tokens (ids 0, 1, 2), then
    `extra_special_tokens`; EOS is <|im_end|>. Normalisation and pre-tokenization are Qwen2's, so
    transformers' AutoTokenizer gives the same ids for every family it is saved with."""
    from tokenizers import Regex, normalizers
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = HFTokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[*SPECIAL_TOKENS, *extra_special_tokens],
                                  show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    return Tokenizer(tok, chat_template, eos_token="<|im_end|>", pad_token="<|endoftext|>")


def tiny_config(family: str = "qwen2", vocab_size: int = 512, hidden_size: int = 64, num_layers: int = 2,
                num_heads: int = 4, num_kv_heads: int = 2, intermediate_size: int | None = None,
                max_position_embeddings: int = 1024, tie_word_embeddings: bool = True,
                eos_token_ids: tuple[int, ...] = ()) -> ModelConfig:
    if family not in ARCH:
        raise ValueError(f"unknown family {family!r}; choose one of {', '.join(ARCH)}")
    return ModelConfig.from_dict({
        "architectures": [ARCH[family]], "vocab_size": vocab_size, "hidden_size": hidden_size,
        "intermediate_size": intermediate_size or 3 * hidden_size, "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads, "num_key_value_heads": num_kv_heads, "head_dim": hidden_size // num_heads,
        "max_position_embeddings": max_position_embeddings, "tie_word_embeddings": tie_word_embeddings,
        "rope_theta": 10000.0, "rms_norm_eps": 1e-6, "eos_token_id": list(eos_token_ids) or None,
    })


def init_weights(model: DecoderLM, std: float = 0.02, seed: int = 0) -> DecoderLM:
    """Normal(0, std) matrices and embeddings, zero biases, unit norms (the usual LM initialisation)."""
    gen = torch.Generator().manual_seed(seed)
    norms = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, RMSNorm)}
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in norms:
                p.fill_(1.0)
            elif name.endswith("bias"):
                p.zero_()
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * std)
    return model


def make_checkpoint(path: str | Path, family: str = "qwen2", tokenizer: Tokenizer | None = None, seed: int = 0,
                    std: float = 0.02, **sizes) -> Path:
    """Save a randomly initialised model (and tokenizer, if given) as a checkpoint directory."""
    if tokenizer is not None:
        sizes.setdefault("vocab_size", tokenizer.vocab_size)
        sizes.setdefault("eos_token_ids", tokenizer.eos_token_ids)
    model = init_weights(DecoderLM(tiny_config(family, **sizes)), std, seed)
    return save_model(model, path, tokenizer)


def make_starting_checkpoint(path: str | Path, family: str, corpus: list[str], seed: int = 0) -> Path:
    """A tiny random checkpoint whose tokenizer is trained on `corpus` (a recipe's `model.init`),
    made beside `path` and renamed to it: a kill leaves no half-made `path` (config.json without
    weights) that a rerun would take for made."""
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise FileExistsError(f"model.init: {path} holds files but no checkpoint (config.json); it makes one only "
                              "in a new or empty directory")
    tokenizer = make_tokenizer(corpus * max(1, 200 // max(len(corpus), 1)), vocab_size=300)
    staging = path.with_name(path.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)  # what a killed attempt left
    make_checkpoint(staging, family, tokenizer, seed=seed, hidden_size=64, num_layers=2)
    publish_dir(staging, path)
    return path
