"""Shared test fixtures. Tests never touch the network: the Hub is switched off before anything imports it."""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # must precede the first huggingface_hub import
# The on-device runtime is its own package under export/; make it importable even before `pip install -e .`.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "export"))

import pytest  # noqa: E402

TINY_WHISPER_SPECIALS = (
    "<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|translate|>", "<|transcribe|>",
    "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>",
)
TINY_WHISPER_MAX_TARGET_POSITIONS = 40  # short, so greedy decoding of a random model hits the limit fast
# Far above Whisper's 0.02: a random model with peaked logits emits varied tokens that depend on the audio,
# which makes "both backends decode the same ids" a meaningful check.
TINY_WHISPER_INIT_STD = 0.3


@pytest.fixture(scope="session")
def teacher_cache(tmp_path_factory):
    """One speechkd cache for the session, so bundled teachers are converted once across test modules."""
    return tmp_path_factory.mktemp("speechkd_cache")


@pytest.fixture(scope="session")
def tiny_whisper_dir(tmp_path_factory):
    """A random English-only Whisper saved like a Hub checkpoint (model + processor + generation config).

    Its tokenizer is a byte-level BPE without merges plus Whisper's control tokens, so the model stays
    tiny and the fixture needs no downloaded or bundled files.
    """
    return build_tiny_whisper(tmp_path_factory.mktemp("tiny_whisper"))


@pytest.fixture(scope="session")
def other_tiny_whisper_dir(tmp_path_factory):
    """Like tiny_whisper_dir but narrower and with its own token ids (the byte alphabet in reverse order):
    a smaller pretrained Whisper of another tokenizer, as tiny.en is to multilingual base."""
    return build_tiny_whisper(tmp_path_factory.mktemp("other_tiny_whisper"), d_model=32, reverse_alphabet=True)


def build_tiny_whisper(out: Path, *, d_model: int = 64, reverse_alphabet: bool = False) -> Path:
    import torch
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    from speechkd.teachers.whisper_tokens import build_generation_config, build_whisper_processor, special_token_ids

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet(), reverse=reverse_alphabet)
    bpe = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in TINY_WHISPER_SPECIALS])
    bpe.save(str(out / "bare_tokenizer.json"))

    vocab_size = len(alphabet) + len(TINY_WHISPER_SPECIALS) + 1501  # + timestamp tokens
    processor = build_whisper_processor(out / "bare_tokenizer.json", num_mel_bins=80, vocab_size=vocab_size)
    (out / "bare_tokenizer.json").unlink()
    ids = special_token_ids(processor.tokenizer)
    eot, sot = ids["<|endoftext|>"], ids["<|startoftranscript|>"]
    config = WhisperConfig(
        vocab_size=vocab_size, d_model=d_model, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128, num_mel_bins=80,
        max_source_positions=1500, max_target_positions=TINY_WHISPER_MAX_TARGET_POSITIONS,
        decoder_start_token_id=sot, bos_token_id=eot, eos_token_id=eot, pad_token_id=eot,
        init_std=TINY_WHISPER_INIT_STD,
    )
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(config).eval()
    model.generation_config = build_generation_config(
        processor.tokenizer, {"suppress_ids_begin": [processor.tokenizer.convert_tokens_to_ids("Ġ"), eot]},
        vocab_size=vocab_size, decoder_layers=2, decoder_attention_heads=4,
        max_target_positions=TINY_WHISPER_MAX_TARGET_POSITIONS,
    )
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def synth_corpus(tmp_path_factory):
    """A small espeak-ng corpus (audiofolder with train/dev/test manifests), made once per session."""
    from speechkd.synth import SynthConfig, synthesize_corpus

    return synthesize_corpus(tmp_path_factory.mktemp("synth") / "corpus", SynthConfig(num_utterances=24, seed=3))


@pytest.fixture(scope="session")
def tiny_en(teacher_cache):
    """The real bundled Whisper tiny.en teacher (converted once per session into the test cache)."""
    from speechkd.teachers import load_whisper

    return load_whisper("bundled:tiny.en", cache_dir=teacher_cache)


def free_port() -> int:
    """A TCP port nobody listens on now: torchrun tests must not collide with another suite on the same machine."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
