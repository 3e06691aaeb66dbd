"""Whisper's special tokens and the tokenizer, processor and generation config built from a bare tokenizer.json.

Shared by the CTranslate2 converter (speechkd.teachers.ct2), the teacher (speechkd.teachers.whisper), the
decoders and the ONNX exporter, none of which should need the converter to know what <|endoftext|> is.
No torch: transformers and tokenizers are imported inside the builders.
"""

from __future__ import annotations

import json
import os

from speechkd.teachers.bundled import TeacherLoadError
from speechkd_runtime.guards import NO_SPEECH_TOKENS  # the one definition (large-v3 renamed <|nocaptions|>)

WHISPER_MAX_TARGET_TOKENS = 448  # decoder positions; also the generation max_length
MULTILINGUAL_MIN_VOCAB = 51865  # same rule as ctranslate2/faster-whisper: .en models have 51864
MAX_INITIAL_TIMESTAMP_INDEX = 50  # 1.0 s in 20 ms steps, as in openai/whisper and faster-whisper
TIMESTAMP_STEP_S = 0.02
NUM_TIMESTAMP_TOKENS = 1501  # <|0.00|> .. <|30.00|>
EOT_TOKEN = "<|endoftext|>"
SOT_TOKEN = "<|startoftranscript|>"
NO_TIMESTAMPS_TOKEN = "<|notimestamps|>"
SOT_PREV_TOKEN = "<|startofprev|>"
SOT_LM_TOKEN = "<|startoflm|>"
TASK_TOKENS = {"transcribe": "<|transcribe|>", "translate": "<|translate|>"}
NON_LANGUAGE_SPECIAL_TOKENS = frozenset(
    {EOT_TOKEN, SOT_TOKEN, NO_TIMESTAMPS_TOKEN, SOT_PREV_TOKEN, SOT_LM_TOKEN, *TASK_TOKENS.values(), *NO_SPEECH_TOKENS}
)
TOKENIZER_FILE = "tokenizer.json"  # a Whisper tokenizer in the tokenizers library's format


def build_whisper_tokenizer(tokenizer_file: str | os.PathLike, vocab_size: int | None = None):
    """A ``WhisperTokenizerFast`` from a bare ``tokenizer.json`` (what faster-whisper dirs carry).

    The added tokens in the file become special tokens (so ``skip_special_tokens`` drops the prompt),
    and timestamp tokens are appended up to the model's vocab size so ids and ``len(tokenizer)`` agree.
    """
    from tokenizers import AddedToken
    from transformers import WhisperTokenizerFast

    with open(tokenizer_file, encoding="utf-8") as f:
        added = [t["content"] for t in json.load(f).get("added_tokens", [])]
    if EOT_TOKEN not in added or SOT_TOKEN not in added:
        raise TeacherLoadError(f"{tokenizer_file} is not a Whisper tokenizer (no {EOT_TOKEN} / {SOT_TOKEN})")
    tokenizer = WhisperTokenizerFast(
        tokenizer_file=str(tokenizer_file),
        unk_token=EOT_TOKEN,
        bos_token=EOT_TOKEN,
        eos_token=EOT_TOKEN,
        pad_token=EOT_TOKEN,
        additional_special_tokens=[t for t in added if t != EOT_TOKEN],
        add_prefix_space=False,
    )
    missing = (vocab_size or 0) - len(tokenizer)
    if missing > 0:
        stamps = [f"<|{i * TIMESTAMP_STEP_S:.2f}|>" for i in range(min(missing, NUM_TIMESTAMP_TOKENS))]
        tokenizer.add_tokens([AddedToken(s, special=False, normalized=False) for s in stamps])
    return tokenizer


def build_whisper_processor(tokenizer_file: str | os.PathLike, *, num_mel_bins: int, vocab_size: int | None = None):
    """Feature extractor (with the model's mel count: 80, or 128 for large-v3) + tokenizer."""
    from transformers import WhisperFeatureExtractor, WhisperProcessor

    return WhisperProcessor(
        feature_extractor=WhisperFeatureExtractor(feature_size=num_mel_bins),
        tokenizer=build_whisper_tokenizer(tokenizer_file, vocab_size),
    )


def special_token_ids(tokenizer) -> dict[str, int | None]:
    """Ids of Whisper's control tokens, ``None`` for any this vocabulary lacks."""
    vocab = tokenizer.get_vocab()
    ids = {tok: vocab.get(tok) for tok in (EOT_TOKEN, SOT_TOKEN, NO_TIMESTAMPS_TOKEN, SOT_PREV_TOKEN, SOT_LM_TOKEN)}
    ids.update({task: vocab.get(tok) for task, tok in TASK_TOKENS.items()})
    ids["no_speech"] = next((vocab[t] for t in NO_SPEECH_TOKENS if t in vocab), None)
    return ids


def build_generation_config(tokenizer, ct2_config: dict, *, vocab_size: int, decoder_layers: int,
                            decoder_attention_heads: int, max_target_positions: int = WHISPER_MAX_TARGET_TOKENS):
    """A ``GenerationConfig`` equivalent to what faster-whisper does with the CT2 ``config.json``.

    Suppressed tokens are the config's list plus the control tokens faster-whisper always suppresses
    (task, start-of-transcript/prev/lm, no-speech), so both backends decode under the same rules.
    ``lang_to_id`` is only set for multilingual models: its presence makes HF detect a language.
    """
    from transformers import GenerationConfig

    ids = special_token_ids(tokenizer)
    multilingual = vocab_size >= MULTILINGUAL_MIN_VOCAB
    controls = [ids[k] for k in ("transcribe", "translate", SOT_TOKEN, SOT_PREV_TOKEN, SOT_LM_TOKEN, "no_speech")]
    suppress = sorted({int(t) for t in ct2_config.get("suppress_ids") or []} | {t for t in controls if t is not None})
    heads = ct2_config.get("alignment_heads") or [
        [layer, head] for layer in range(decoder_layers // 2, decoder_layers) for head in range(decoder_attention_heads)
    ]
    gen = GenerationConfig(
        decoder_start_token_id=ids[SOT_TOKEN],
        bos_token_id=ids[EOT_TOKEN],
        eos_token_id=ids[EOT_TOKEN],
        pad_token_id=ids[EOT_TOKEN],
        max_length=max_target_positions,
        suppress_tokens=suppress,
        begin_suppress_tokens=[int(t) for t in ct2_config.get("suppress_ids_begin") or [ids[EOT_TOKEN]]],
        no_timestamps_token_id=ids[NO_TIMESTAMPS_TOKEN],
        prev_sot_token_id=ids[SOT_PREV_TOKEN],
        max_initial_timestamp_index=MAX_INITIAL_TIMESTAMP_INDEX,
        forced_decoder_ids=None,
        is_multilingual=multilingual,
        alignment_heads=[[int(a), int(b)] for a, b in heads],
        task_to_id={task: ids[task] for task in TASK_TOKENS if ids[task] is not None},
    )
    if multilingual:
        gen.lang_to_id = _language_ids(tokenizer, ct2_config)
    return gen


def _language_ids(tokenizer, ct2_config: dict) -> dict[str, int]:
    lang_ids = ct2_config.get("lang_ids")
    if lang_ids:
        tokens = tokenizer.convert_ids_to_tokens([int(i) for i in lang_ids])
        return dict(zip(tokens, (int(i) for i in lang_ids)))
    vocab = tokenizer.get_vocab()
    return {
        tok: vocab[tok]
        for tok in tokenizer.all_special_tokens
        if tok.startswith("<|") and tok not in NON_LANGUAGE_SPECIAL_TOKENS and tok in vocab
    }
