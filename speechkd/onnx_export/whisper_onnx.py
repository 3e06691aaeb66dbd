"""Export a Whisper student (or teacher) for on-device decoding: ONNX + KV cache, and CTranslate2.

ONNX layout (what ``speechkd_runtime.whisper`` runs without torch or transformers)::

    encoder.onnx   mel [B, n_mels, 3000] -> encoder_hidden_states [B, 1500, D],
                                            cross_k_<i> [B, H, D/H, 1500], cross_v_<i> [B, H, 1500, D/H]
                                            for each decoder layer i: its cross-attention keys (already
                                            transposed for q.k) and values, computed once per clip
    decoder.onnx   tokens [B, T] int64, self_k, self_v [L, B, P, D] (P = tokens decoded so far, 0 at
                   the start), cross_k_<i>, cross_v_<i> -> logits [B, T, V], new_self_k, new_self_v
                   [L, B, P+T, D]
    *.int8.onnx    the same graphs with int8 weights and per-row dynamic int8 activations (see
                   quantize_graphs; format-2 exports before "int8_activation_scales" were per tensor)
    config.json    model_type "whisper", n_mels, sizes, special token ids, decoding rules (prompt,
                   suppressed tokens, max_new_tokens)
    tokens.json    the byte-level BPE tokens by id, for decoding ids to text without a tokenizer library

Why our own graphs rather than optimum: optimum-onnx pins transformers < 4.58 (this project runs 5.x).
The graphs are written here from the model's own modules (the same nn.Linear/LayerNorm weights, the
same order of operations as ``modeling_whisper``), with the cache as plain tensors, and exported with
the TorchScript exporter (``dynamo=False``): it needs no onnxscript, gives one self-contained file, and
the tests check that its logits match ``WhisperForConditionalGeneration``.

Why one input per layer, in head layout: the decoder runs once per token, and the cross K/V are by far its
largest inputs. Stacked as [L, B, 1500, D] (format 1), every call split them per layer and transposed them
into heads: two thirds of a step of base's decoder went into those copies (onnxruntime profile: Transpose
40 %, Split 27 %, MatMul 28 %). Now the encoder lays them out once and the decoder reads them as they are.

Usage:
    from speechkd.onnx_export.whisper_onnx import export_whisper, export_whisper_ct2
    export_whisper("exp/base-2dec", "exp/base-2dec/onnx")          # + int8 variants
    export_whisper_ct2("exp/base-2dec", "exp/base-2dec/ct2")         # faster-whisper model dir
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from speechkd.io import atomic_directory, atomic_write_json
from speechkd.onnx_export.common import ExportError  # one error class for every export, so the CLI reports them all
from speechkd_runtime.audio import SAMPLE_RATE_HZ

log = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: per-layer cross K/V in head layout (1: stacked [L, B, 1500, D]; the runtime runs both)
OPSET = 17  # LayerNormalization is a native op from 17 on
ENCODER_FILE, DECODER_FILE = "encoder.onnx", "decoder.onnx"
INT8_SUFFIX = ".int8.onnx"
INT8_ACTIVATION_SCALES = "per_row"  # config.json key the runtime reads: per-row int8 graphs batch like fp32
TOKENS_FILE = "tokens.json"
QUANTIZE_MODES = ("dynamic",)
CHUNK_SECONDS = 30


# --- the two graphs --------------------------------------------------------------------------------------


def _heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """[B, T, D] -> [B, H, T, D/H]."""
    b, t, d = x.shape
    return x.reshape(b, t, num_heads, d // num_heads).transpose(1, 2)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int,
            mask: torch.Tensor | None = None) -> torch.Tensor:
    """Scaled dot-product attention with the scale already folded into q (Whisper scales q before q.k)."""
    qh, kh, vh = _heads(q, num_heads), _heads(k, num_heads), _heads(v, num_heads)
    scores = torch.matmul(qh, kh.transpose(2, 3))
    if mask is not None:
        scores = scores + mask
    out = torch.matmul(torch.softmax(scores, dim=-1), vh)
    b, _, t, _ = out.shape
    return out.transpose(1, 2).reshape(b, t, -1)


def _feed_forward(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return x + layer.fc2(nn.functional.gelu(layer.fc1(layer.final_layer_norm(x))))


class WhisperEncoderGraph(nn.Module):
    """log-mel -> encoder states and every decoder layer's cross-attention K/V."""

    def __init__(self, model):
        super().__init__()
        self.encoder = model.model.encoder
        self.decoder_layers = model.model.decoder.layers
        self.num_heads = model.config.encoder_attention_heads

    def forward(self, mel: torch.Tensor):
        enc = self.encoder
        x = nn.functional.gelu(enc.conv1(mel))
        x = nn.functional.gelu(enc.conv2(x)).permute(0, 2, 1)
        x = x + enc.embed_positions.weight  # modeling_whisper ignores embed_scale too
        for layer in enc.layers:
            att = layer.self_attn
            h = layer.self_attn_layer_norm(x)
            x = x + att.out_proj(_attend(att.q_proj(h) * att.scaling, att.k_proj(h), att.v_proj(h), self.num_heads))
            x = _feed_forward(layer, x)
        x = enc.layer_norm(x)
        keys = [_heads(layer.encoder_attn.k_proj(x), self.num_heads).transpose(2, 3) for layer in self.decoder_layers]
        values = [_heads(layer.encoder_attn.v_proj(x), self.num_heads) for layer in self.decoder_layers]
        return (x, *keys, *values)


def cross_names(num_layers: int) -> list[str]:
    """Names of the per-layer cross-attention inputs, in the encoder's output (and decoder's input) order."""
    return [f"cross_k_{i}" for i in range(num_layers)] + [f"cross_v_{i}" for i in range(num_layers)]


class WhisperDecoderGraph(nn.Module):
    """One decoder call over T new tokens with a self-attention cache of P past tokens."""

    def __init__(self, model):
        super().__init__()
        self.decoder = model.model.decoder
        self.num_heads = model.config.decoder_attention_heads
        # The output projection as a [D, V] weight of a plain MatMul, which int8 quantisation covers (Gemm is
        # not quantised dynamically). With tied embeddings (Whisper's default) the token lookup reads the
        # same [D, V] tensor, column by column, so the graph stores the V x D table (~26 M numbers for base) once.
        self.proj_t = nn.Parameter(model.proj_out.weight.detach().t().contiguous(), requires_grad=False)
        self.tied = torch.equal(model.proj_out.weight, self.decoder.embed_tokens.weight)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        if not self.tied:
            return self.decoder.embed_tokens(tokens)
        columns = torch.index_select(self.proj_t, 1, tokens.reshape(-1))  # Gather(axis=1): [D, B*T]
        return columns.t().reshape(tokens.shape[0], tokens.shape[1], -1)

    def forward(self, tokens, self_k, self_v, *cross):
        dec = self.decoder
        cross_k, cross_v = cross[:len(dec.layers)], cross[len(dec.layers):]
        past, new = self_k.shape[2], tokens.shape[1]
        x = self.embed(tokens) + dec.embed_positions.weight[past:past + new]
        # Causal mask over [past + new] keys: query i (position past + i) sees keys 0 .. past + i.
        q_pos = torch.arange(new, device=tokens.device).unsqueeze(1) + past
        k_pos = torch.arange(past + new, device=tokens.device).unsqueeze(0)
        mask = torch.where(k_pos > q_pos, torch.tensor(float("-inf")), torch.tensor(0.0))
        keys, values = [], []
        for i, layer in enumerate(dec.layers):
            att = layer.self_attn
            h = layer.self_attn_layer_norm(x)
            k = torch.cat([self_k[i], att.k_proj(h)], dim=1)
            v = torch.cat([self_v[i], att.v_proj(h)], dim=1)
            keys.append(k)
            values.append(v)
            x = x + att.out_proj(_attend(att.q_proj(h) * att.scaling, k, v, self.num_heads, mask))
            att = layer.encoder_attn
            q = _heads(att.q_proj(layer.encoder_attn_layer_norm(x)) * att.scaling, self.num_heads)
            out = torch.matmul(torch.softmax(torch.matmul(q, cross_k[i]), dim=-1), cross_v[i])
            b, _, t, _ = out.shape
            x = x + att.out_proj(out.transpose(1, 2).reshape(b, t, -1))
            x = _feed_forward(layer, x)
        logits = torch.matmul(dec.layer_norm(x), self.proj_t)
        return logits, torch.stack(keys), torch.stack(values)


# --- export ---------------------------------------------------------------------------------------------


def _load(model_spec: str | os.PathLike):
    """(model, processor, generation config, source name) from a student dir, HF dir or teacher spec."""
    from transformers import WhisperForConditionalGeneration

    from speechkd.teachers import load_whisper
    from speechkd.teachers.bundled import TeacherLoadError

    try:
        teacher = load_whisper(model_spec)
    except TeacherLoadError as e:
        raise ExportError(f"cannot export {model_spec}: {e}") from e
    model = WhisperForConditionalGeneration.from_pretrained(teacher.hf_dir).float().eval()
    return model, teacher.processor, model.generation_config, teacher


def _example_inputs(model, batch: int = 1, past: int = 2, new: int = 3):
    cfg = model.config
    mel = torch.randn(batch, cfg.num_mel_bins, 2 * cfg.max_source_positions)
    cache = torch.zeros(cfg.decoder_layers, batch, past, cfg.d_model)
    heads, frames = cfg.decoder_attention_heads, cfg.max_source_positions
    keys = [torch.zeros(batch, heads, cfg.d_model // heads, frames) for _ in range(cfg.decoder_layers)]
    values = [torch.zeros(batch, heads, frames, cfg.d_model // heads) for _ in range(cfg.decoder_layers)]
    tokens = torch.zeros(batch, new, dtype=torch.long)
    return mel, (tokens, cache, cache.clone(), *keys, *values)


def _torch_onnx_export(module: nn.Module, args: tuple, path: Path, inputs: Sequence[str], outputs: Sequence[str],
                       dynamic_axes: dict) -> None:
    import warnings

    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript exporter warns that it is deprecated and about traced shape arithmetic, which is
        # intended here (the cache length is read from the input shape).
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), input_names=list(inputs), output_names=list(outputs),
                          dynamic_axes=dynamic_axes, opset_version=OPSET, dynamo=False, do_constant_folding=True)


def export_graphs(model, out_dir: Path) -> dict[str, str]:
    """Write encoder.onnx and decoder.onnx for ``model`` (a WhisperForConditionalGeneration) into out_dir."""
    import onnx

    model = model.float().eval()
    mel, dec_args = _example_inputs(model)
    cross = cross_names(model.config.decoder_layers)
    _torch_onnx_export(
        WhisperEncoderGraph(model), (mel,), out_dir / ENCODER_FILE, ["mel"], ["encoder_hidden_states", *cross],
        {"mel": {0: "batch"}, "encoder_hidden_states": {0: "batch"}, **{n: {0: "batch"} for n in cross}},
    )
    cache_axes = {1: "batch", 2: "past"}
    _torch_onnx_export(
        WhisperDecoderGraph(model), dec_args, out_dir / DECODER_FILE,
        ["tokens", "self_k", "self_v", *cross], ["logits", "new_self_k", "new_self_v"],
        {"tokens": {0: "batch", 1: "new"}, "self_k": cache_axes, "self_v": cache_axes,
         **{n: {0: "batch"} for n in cross}, "logits": {0: "batch", 1: "new"},
         "new_self_k": {1: "batch", 2: "total"}, "new_self_v": {1: "batch", 2: "total"}},
    )
    for name in (ENCODER_FILE, DECODER_FILE):
        onnx.checker.check_model(str(out_dir / name))
    return {"encoder": ENCODER_FILE, "decoder": DECODER_FILE}


def quantize_graphs(out_dir: Path, files: dict[str, str]) -> dict[str, str]:
    """int8 graphs: every MatMul with a constant weight becomes a per-row dynamic int8 product (int8 weights
    per output column, each activation row quantised with its own scale at run time); embedding tables are
    int8 behind their Gather; the remaining large weights (conv kernels, position tables) are stored int8
    and computed in float.

    Why per row rather than onnxruntime's per-tensor dynamic quantisation: Whisper's encoder activations
    carry a few frames 20-60x larger than the rest (the fc2 inputs most: 81 against ~3 in a layer of the
    benchmark student), and one scale per tensor rounded the other frames to a handful of levels. Per
    tensor, the 2-layer benchmark student lost 22 WER points on its synthetic test (71.5 vs 49.6) and the
    teacher ~1 point on LJ; keeping fc2 in float fixed that at ~15 % more encoder time; per row, the student
    is within its fp32 WER at about the per-tensor speed (benchmarks/export.py has the numbers). A per-row
    scale also depends on nothing but its own row, so int8 graphs batch like fp32 ones.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from speechkd.onnx_export.quantize import column_gathers_of_matmul_weights, quantize_rows_int8, store_weights_int8

    out = {}
    for role, name in files.items():
        target = name.replace(".onnx", INT8_SUFFIX)
        # An untied token embedding: int8 rows, dequantised after lookup. A tied one is read from the output
        # projection's int8 columns (quantize_rows_int8), so it is stored once.
        quantize_dynamic(str(out_dir / name), str(out_dir / target), weight_type=QuantType.QInt8,
                         op_types_to_quantize=["Gather"],
                         nodes_to_exclude=column_gathers_of_matmul_weights(out_dir / name))
        quantize_rows_int8(out_dir / target)
        # The encoder's convolutions compute in float (ConvInteger has no CPU kernel in onnxruntime for all
        # shapes, and the conv front end is a small share of the encoder's time); their weights are stored int8.
        store_weights_int8(out_dir / target)
        out[role] = target
    return out


def whisper_config(model, tokenizer, generation_config) -> dict:
    """config.json for the runtime: sizes, special tokens and the decoding rules HF generate applies."""
    from speechkd.teachers.whisper_tokens import (EOT_TOKEN, NO_TIMESTAMPS_TOKEN, SOT_TOKEN, TASK_TOKENS,
                                                  special_token_ids)

    cfg = model.config
    vocab = tokenizer.get_vocab()
    ids = special_token_ids(tokenizer)
    multilingual = bool(getattr(generation_config, "is_multilingual", False))
    languages = dict(getattr(generation_config, "lang_to_id", None) or {}) if multilingual else {}
    prompt = [vocab[SOT_TOKEN]]
    if multilingual:
        if "<|en|>" not in vocab:
            raise ExportError("a multilingual model without <|en|> in its vocabulary cannot get a default prompt")
        prompt += [vocab["<|en|>"], vocab[TASK_TOKENS["transcribe"]]]
    prompt.append(vocab[NO_TIMESTAMPS_TOKEN])
    max_length = int(generation_config.max_length or cfg.max_target_positions)
    return {
        "model_type": "whisper",
        "format_version": FORMAT_VERSION,
        "sample_rate": SAMPLE_RATE_HZ,
        "chunk_seconds": CHUNK_SECONDS,
        "n_mels": int(cfg.num_mel_bins),
        "n_audio_ctx": int(cfg.max_source_positions),
        "n_text_ctx": int(cfg.max_target_positions),
        "d_model": int(cfg.d_model),
        "encoder_layers": int(cfg.encoder_layers),
        "decoder_layers": int(cfg.decoder_layers),
        "vocab_size": int(cfg.vocab_size),
        "is_multilingual": multilingual,
        "sot": vocab[SOT_TOKEN],
        "eot": vocab[EOT_TOKEN],
        "no_timestamps": vocab[NO_TIMESTAMPS_TOKEN],
        "transcribe": ids.get("transcribe"),
        "translate": ids.get("translate"),
        "languages": {k.strip("<|>"): int(v) for k, v in languages.items()},
        "default_language": "en" if multilingual else None,
        "prompt": prompt,
        # Whisper's control tokens, timestamps included, all sit at ids >= eot: decoding text skips them.
        "first_special_id": vocab[EOT_TOKEN],
        "suppress_tokens": [int(t) for t in (generation_config.suppress_tokens or [])],
        "begin_suppress_tokens": [int(t) for t in (generation_config.begin_suppress_tokens or [])],
        # The rule the transformers and ctranslate2 backends apply: at most half the decoder context.
        "max_new_tokens": max_length // 2,
        "tokens": TOKENS_FILE,
        "files": {"fp32": {"encoder": ENCODER_FILE, "decoder": DECODER_FILE}},
        "default_variant": "fp32",
    }


def token_table(tokenizer, vocab_size: int) -> list[str]:
    """Token strings by id (byte-level BPE symbols; '' for ids the tokenizer does not define)."""
    table = [""] * vocab_size
    for token, i in tokenizer.get_vocab().items():
        if 0 <= i < vocab_size:
            table[i] = token
    return table


def export_whisper(student_dir: str | os.PathLike, out_dir: str | os.PathLike,
                   quantize: Sequence[str] = ("dynamic",)) -> Path:
    """Export ``student_dir`` (a saved student, any save_pretrained Whisper dir, or a teacher spec) to ONNX.

    Writes into a temporary sibling and renames it into place, so ``out_dir`` is either the old export
    or a complete new one. Returns ``out_dir``.
    """
    unknown = [q for q in quantize if q not in QUANTIZE_MODES]
    if unknown:
        raise ExportError(f"quantize={list(quantize)}: unknown mode(s) {unknown}; choose from {list(QUANTIZE_MODES)}")
    model, processor, gen, _ = _load(student_dir)
    out = Path(out_dir)
    with atomic_directory(out) as tmp:
        files = export_graphs(model, tmp)
        config = whisper_config(model, processor.tokenizer, gen)
        config["source_student_dir"] = os.fspath(student_dir)  # what `speechkd verify` compares against
        if "dynamic" in quantize:
            config["files"]["int8"] = quantize_graphs(tmp, files)
            config["int8_activation_scales"] = INT8_ACTIVATION_SCALES
        atomic_write_json(tmp / TOKENS_FILE, token_table(processor.tokenizer, model.config.vocab_size))
        atomic_write_json(tmp / "config.json", config)
    log.info("exported %s to %s (%s)", student_dir, out, ", ".join(config["files"]))
    return out


# --- CTranslate2 (faster-whisper) -----------------------------------------------------------------------


def export_whisper_ct2(student_dir: str | os.PathLike, out_dir: str | os.PathLike, quantization: str = "int8") -> Path:
    """A faster-whisper model dir (model.bin, config.json, tokenizer.json, preprocessor_config.json).

    ``quantization`` is CTranslate2's weight type (int8, int8_float16, float16, float32, ...). The
    feature extractor config is written as preprocessor_config.json because faster-whisper reads the
    number of mel bins from it (transformers 5 saves it inside processor_config.json instead).
    """
    from speechkd.teachers import TeacherLoadError, load_whisper
    from speechkd.teachers.whisper import convert_hf_to_ct2

    try:
        teacher = load_whisper(student_dir)
        return convert_hf_to_ct2(Path(teacher.hf_dir), Path(out_dir), quantization,
                                 feature_extractor=teacher.processor.feature_extractor.to_dict())
    except TeacherLoadError as e:
        raise ExportError(f"cannot export {student_dir} to CTranslate2: {e}") from e
