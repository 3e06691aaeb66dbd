"""CTranslate2 (faster-whisper) Whisper models -> ``transformers`` ``WhisperForConditionalGeneration``.

The only real Whisper weights available offline here are faster-whisper models, and users have many
more of those. Logit distillation and student initialisation need the model in PyTorch, so this
module reads ``model.bin`` directly (no ctranslate2 import needed) and rebuilds the Hugging Face
checkpoint: config from the tensor shapes, weights by undoing CTranslate2's layer fusions, and a
processor + generation config from the ``tokenizer.json``/``config.json`` that sit beside the model.

The result is cached under ``<cache>/converted/<sha256(model.bin)[:16]>/`` so a second load is a
plain ``from_pretrained``. The proof that a conversion is right (greedy transcripts of the converted
model equal faster-whisper's on the same audio) is speechkd.teachers.ct2_parity, kept out of the
converter because it needs the teacher built on it. Whisper's tokens and the processor/generation
config builders live in speechkd.teachers.whisper_tokens.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Sequence

import numpy as np
import torch

from speechkd.io import atomic_directory, atomic_write_json
from speechkd.io import cache_dir as default_cache_dir
from speechkd.teachers.bundled import CT2_MODEL_FILE, TeacherLoadError, file_sha256, read_json
from speechkd.teachers.whisper_tokens import (
    EOT_TOKEN,
    SOT_TOKEN,
    TOKENIZER_FILE,
    build_generation_config,
    build_whisper_processor,
    special_token_ids,
)

# --- model.bin format (ctranslate2/specs/model_spec.py: ModelSpec._serialize) -----------------------
# Little-endian: u32 version, str spec name, u32 spec revision, u32 n_vars, then per variable
# (str name, u8 rank, u32 dims[rank], u8 dtype id, u32 n_bytes, bytes), then u32 n_aliases and
# (str alias, str target) pairs. A str is u16 length (incl. NUL) + UTF-8 bytes + NUL.
CT2_MIN_BINARY_VERSION = 5  # first version with the dtype-id layout used for Whisper models
CT2_MAX_BINARY_VERSION = 6  # ctranslate2 4.x writes 6
CT2_WHISPER_SPEC_NAME = "WhisperSpec"
# Order of the DataType enum in ctranslate2/types.h; bfloat16 is read as raw uint16 and widened.
CT2_DTYPES: dict[int, str] = {0: "float32", 1: "int8", 2: "int16", 3: "int32", 4: "float16", 5: "bfloat16"}
CT2_GELU_ACTIVATION = 3  # ctranslate2.specs.common_spec.Activation.GELU
# Scalars with no HF counterpart that are safe to drop: alignment hints (HF takes alignment heads from
# config.json) and ALiBi options, which only matter when decoder/alibi is on (checked to be off).
IGNORED_SCALARS = ("decoder/alignment_heads", "decoder/alignment_layer",
                   "decoder/alibi_use_positive_positions", "decoder/scale_alibi")
SCALE_SUFFIX = "_scale"  # quantised weights carry a per-row (int8) or scalar (int16) scale

# --- cache --------------------------------------------------------------------------------------
CONVERTED_SUBDIR = "converted"
CACHE_KEY_HEX_CHARS = 16
CONVERSION_MARKER = "speechkd_conversion.json"
# Bump when the converted output changes (new fields, fixes): older cache entries are rebuilt.
CONVERSION_FORMAT_VERSION = 1
CT2_CONFIG_FILE = "config.json"


@dataclass
class Ct2ModelFile:
    """The parsed content of a CTranslate2 ``model.bin``: variables as numpy arrays plus aliases."""

    binary_version: int
    spec_name: str
    spec_revision: int
    variables: dict[str, np.ndarray] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)

    def resolve(self, name: str) -> str:
        """Follow alias chains (e.g. the tied output projection) to a stored variable name."""
        seen = set()
        while name in self.aliases:
            if name in seen:
                raise TeacherLoadError(f"CTranslate2 model.bin has an alias cycle at {name!r}")
            seen.add(name)
            name = self.aliases[name]
        return name

    def has(self, name: str) -> bool:
        return self.resolve(name) in self.variables

    def get(self, name: str) -> np.ndarray:
        return self.variables[self.resolve(name)]


def read_ct2_model(path: str | os.PathLike) -> Ct2ModelFile:
    """Parse a CTranslate2 ``model.bin`` without importing ctranslate2 (format: module constants)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            version = _read_u32(f)
            if not CT2_MIN_BINARY_VERSION <= version <= CT2_MAX_BINARY_VERSION:
                raise ValueError(
                    f"binary version {version}; this reader supports {CT2_MIN_BINARY_VERSION}-{CT2_MAX_BINARY_VERSION}"
                    " (re-convert the model with ctranslate2>=3, or update speechkd for newer formats)"
                )
            model = Ct2ModelFile(version, _read_str(f), _read_u32(f))
            for _ in range(_read_u32(f)):
                name = _read_str(f)
                rank = _read_struct(f, "B")[0]
                shape = _read_struct(f, f"{rank}I") if rank else ()
                dtype_id = _read_struct(f, "B")[0]
                n_bytes = _read_u32(f)
                if dtype_id not in CT2_DTYPES:
                    raise ValueError(f"variable {name!r} has unknown dtype id {dtype_id}")
                model.variables[name] = _decode_array(f.read(n_bytes), CT2_DTYPES[dtype_id], shape, n_bytes, name)
            for _ in range(_read_u32(f)):
                alias = _read_str(f)
                model.aliases[alias] = _read_str(f)
    except (struct.error, ValueError, UnicodeDecodeError) as e:
        raise TeacherLoadError(f"{path} is not a readable CTranslate2 model.bin ({e})") from e
    return model


def _read_struct(f: BinaryIO, fmt: str) -> tuple:
    fmt = "<" + fmt
    size = struct.calcsize(fmt)
    data = f.read(size)
    if len(data) != size:
        raise ValueError("file ends early (truncated download or copy?)")
    return struct.unpack(fmt, data)


def _read_u32(f: BinaryIO) -> int:
    return _read_struct(f, "I")[0]


def _read_str(f: BinaryIO) -> str:
    length = _read_struct(f, "H")[0]
    raw = f.read(length)
    if len(raw) != length:
        raise ValueError("file ends early inside a string")
    return raw.rstrip(b"\0").decode("utf-8")


def _decode_array(raw: bytes, dtype: str, shape: tuple, n_bytes: int, name: str) -> np.ndarray:
    if len(raw) != n_bytes:
        raise ValueError(f"file ends early inside variable {name!r}")
    if dtype == "bfloat16":
        # bfloat16 is the top half of a float32: widen by shifting into the high 16 bits.
        arr = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
    else:
        arr = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<"))
    expected = int(np.prod(shape)) if shape else 1
    if arr.size != expected:
        raise ValueError(f"variable {name!r}: {arr.size} values for shape {shape}")
    return arr.reshape(shape) if shape else arr.reshape(())


# --- weights ------------------------------------------------------------------------------------


class _Weights:
    """Float32 views of a model's variables that remember what was consumed.

    Every stored tensor must land in the HF model; leftovers mean a layout we do not understand,
    which is an error rather than a silently half-converted teacher.
    """

    def __init__(self, model: Ct2ModelFile):
        self.model = model
        self.used: set[str] = set()

    def scalar(self, name: str) -> float | None:
        if not self.model.has(name):
            return None
        self.used.add(self.model.resolve(name))
        return float(self.model.get(name))

    def tensor(self, name: str) -> torch.Tensor:
        stored = self.model.resolve(name)
        if stored not in self.model.variables:
            raise TeacherLoadError(f"CTranslate2 Whisper model lacks variable {name!r}; not a standard Whisper layout")
        self.used.add(stored)
        arr = self.model.variables[stored]
        scale_name = stored + SCALE_SUFFIX
        if scale_name in self.model.variables:
            # Undo ctranslate2 quantisation: int8 rows were multiplied by scale[row], int16 by one scalar.
            self.used.add(scale_name)
            scale = self.model.variables[scale_name].astype(np.float32)
            if f"{stored}_zero" in self.model.variables:
                raise TeacherLoadError(f"{stored!r} uses AWQ/zero-point quantisation, which cannot be converted")
            scale = scale.reshape((-1,) + (1,) * (arr.ndim - 1)) if scale.ndim else scale
            arr = arr.astype(np.float32) / scale
        return torch.from_numpy(np.array(arr, dtype=np.float32, copy=True))

    def linear(self, sd: dict, prefix: str, name: str, *, bias: bool = True) -> None:
        sd[f"{prefix}.weight"] = self.tensor(f"{name}/weight")
        if bias:
            sd[f"{prefix}.bias"] = self.tensor(f"{name}/bias")

    def layer_norm(self, sd: dict, prefix: str, name: str) -> None:
        sd[f"{prefix}.weight"] = self.tensor(f"{name}/gamma")
        sd[f"{prefix}.bias"] = self.tensor(f"{name}/beta")

    def split_linear(self, sd: dict, prefixes: Sequence[str], name: str) -> None:
        """Split a fused projection (q|k|v or k|v) back into HF's separate Linear layers.

        Whisper's k_proj has no bias; ctranslate2 fused a zero vector in its place. A key bias would
        not change attention anyway (it adds the same q.b to every score of a query), so it is dropped.
        """
        weight = self.tensor(f"{name}/weight")
        bias = self.tensor(f"{name}/bias")
        for prefix, w, b in zip(prefixes, weight.chunk(len(prefixes)), bias.chunk(len(prefixes))):
            sd[f"{prefix}.weight"] = w.contiguous()
            if not prefix.endswith("k_proj"):
                sd[f"{prefix}.bias"] = b.contiguous()

    def unused(self) -> list[str]:
        return sorted(set(self.model.variables) - self.used)


def _count_layers(model: Ct2ModelFile, stack: str) -> int:
    n = 0
    while any(k.startswith(f"{stack}/layer_{n}/") for k in model.variables):
        n += 1
    return n


def whisper_state_dict_from_ct2(model: Ct2ModelFile) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Map CTranslate2 Whisper variables to HF parameter names; also return shape-derived config values."""
    if model.spec_name != CT2_WHISPER_SPEC_NAME:
        raise TeacherLoadError(
            f"CTranslate2 model is a {model.spec_name!r}, not a Whisper model ({CT2_WHISPER_SPEC_NAME})"
        )
    w = _Weights(model)
    sd: dict[str, torch.Tensor] = {}
    enc_layers, dec_layers = _count_layers(model, "encoder"), _count_layers(model, "decoder")

    sd["model.encoder.conv1.weight"] = w.tensor("encoder/conv1/weight")
    sd["model.encoder.conv1.bias"] = w.tensor("encoder/conv1/bias")
    sd["model.encoder.conv2.weight"] = w.tensor("encoder/conv2/weight")
    sd["model.encoder.conv2.bias"] = w.tensor("encoder/conv2/bias")
    sd["model.encoder.embed_positions.weight"] = w.tensor("encoder/position_encodings/encodings")
    w.layer_norm(sd, "model.encoder.layer_norm", "encoder/layer_norm")
    for i in range(enc_layers):
        src, dst = f"encoder/layer_{i}", f"model.encoder.layers.{i}"
        w.split_linear(sd, [f"{dst}.self_attn.{p}_proj" for p in "qkv"], f"{src}/self_attention/linear_0")
        w.linear(sd, f"{dst}.self_attn.out_proj", f"{src}/self_attention/linear_1")
        w.layer_norm(sd, f"{dst}.self_attn_layer_norm", f"{src}/self_attention/layer_norm")
        _ffn(w, sd, dst, src)

    sd["model.decoder.embed_tokens.weight"] = w.tensor("decoder/embeddings/weight")
    sd["model.decoder.embed_positions.weight"] = w.tensor("decoder/position_encodings/encodings")
    w.layer_norm(sd, "model.decoder.layer_norm", "decoder/layer_norm")
    for i in range(dec_layers):
        src, dst = f"decoder/layer_{i}", f"model.decoder.layers.{i}"
        w.split_linear(sd, [f"{dst}.self_attn.{p}_proj" for p in "qkv"], f"{src}/self_attention/linear_0")
        w.linear(sd, f"{dst}.self_attn.out_proj", f"{src}/self_attention/linear_1")
        w.layer_norm(sd, f"{dst}.self_attn_layer_norm", f"{src}/self_attention/layer_norm")
        w.linear(sd, f"{dst}.encoder_attn.q_proj", f"{src}/attention/linear_0")
        w.split_linear(sd, [f"{dst}.encoder_attn.{p}_proj" for p in "kv"], f"{src}/attention/linear_1")
        w.linear(sd, f"{dst}.encoder_attn.out_proj", f"{src}/attention/linear_2")
        w.layer_norm(sd, f"{dst}.encoder_attn_layer_norm", f"{src}/attention/layer_norm")
        _ffn(w, sd, dst, src)

    tied = model.resolve("decoder/projection/weight") == model.resolve("decoder/embeddings/weight")
    sd["proj_out.weight"] = w.tensor("decoder/projection/weight")
    if model.has("decoder/projection/bias"):
        bias = w.tensor("decoder/projection/bias")
        if bool(bias.abs().max() > 0):
            raise TeacherLoadError(
                "this Whisper variant has an output bias, which WhisperForConditionalGeneration lacks"
            )

    _check_whisper_flags(w)
    enc_heads, dec_heads = w.scalar("encoder/num_heads"), w.scalar("decoder/num_heads")
    for name in IGNORED_SCALARS:
        w.scalar(name)
    leftovers = w.unused()
    if leftovers:
        raise TeacherLoadError(
            f"CTranslate2 Whisper model has variables this converter does not map: {leftovers[:8]}"
            f"{' ...' if len(leftovers) > 8 else ''}; it is not a standard Whisper layout"
        )
    d_model = sd["model.decoder.embed_tokens.weight"].shape[1]
    shapes = {
        "vocab_size": sd["model.decoder.embed_tokens.weight"].shape[0],
        "d_model": d_model,
        "num_mel_bins": sd["model.encoder.conv1.weight"].shape[1],
        "encoder_layers": enc_layers,
        "decoder_layers": dec_layers,
        "encoder_attention_heads": int(enc_heads) if enc_heads else None,
        "decoder_attention_heads": int(dec_heads) if dec_heads else None,
        "encoder_ffn_dim": sd["model.encoder.layers.0.fc1.weight"].shape[0] if enc_layers else 4 * d_model,
        "decoder_ffn_dim": sd["model.decoder.layers.0.fc1.weight"].shape[0] if dec_layers else 4 * d_model,
        "max_source_positions": sd["model.encoder.embed_positions.weight"].shape[0],
        "max_target_positions": sd["model.decoder.embed_positions.weight"].shape[0],
        "tie_word_embeddings": tied,
    }
    if shapes["encoder_attention_heads"] is None or shapes["decoder_attention_heads"] is None:
        raise TeacherLoadError("CTranslate2 Whisper model lacks encoder/num_heads or decoder/num_heads")
    return sd, shapes


def _ffn(w: _Weights, sd: dict, dst: str, src: str) -> None:
    w.linear(sd, f"{dst}.fc1", f"{src}/ffn/linear_0")
    w.linear(sd, f"{dst}.fc2", f"{src}/ffn/linear_1")
    w.layer_norm(sd, f"{dst}.final_layer_norm", f"{src}/ffn/layer_norm")


def _check_whisper_flags(w: _Weights) -> None:
    """Refuse decoder options that WhisperForConditionalGeneration cannot express."""
    expected = {
        "decoder/scale_embeddings": (0.0, 1.0),  # False, or a factor of 1.0
        "decoder/pre_norm": (1.0,),
        "decoder/activation": (float(CT2_GELU_ACTIVATION),),
        "decoder/alibi": (0.0,),
        "decoder/scale_outputs": (1.0,),
        "decoder/start_from_zero_embedding": (0.0,),
    }
    for name, allowed in expected.items():
        value = w.scalar(name)
        if value is not None and value not in allowed:
            raise TeacherLoadError(f"CTranslate2 Whisper model has {name}={value}; only {allowed} can be converted")


# --- conversion entry point ---------------------------------------------------------------------


def converted_dir_for(ct2_dir: str | os.PathLike, *, cache_root: str | os.PathLike | None = None) -> Path:
    """Where the HF conversion of ``ct2_dir`` lives in the cache (keyed by its weights' sha256)."""
    root = Path(cache_root) if cache_root is not None else default_cache_dir()
    digest = file_sha256(Path(ct2_dir) / CT2_MODEL_FILE, cache_root=root)
    return root / CONVERTED_SUBDIR / digest[:CACHE_KEY_HEX_CHARS]


def conversion_is_complete(out_dir: str | os.PathLike) -> bool:
    try:
        info = json.loads((Path(out_dir) / CONVERSION_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return info.get("format_version") == CONVERSION_FORMAT_VERSION


def convert_ct2_to_transformers(
    ct2_dir: str | os.PathLike,
    output_dir: str | os.PathLike | None = None,
    *,
    cache_root: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> Path:
    """Convert a CTranslate2 Whisper dir to a ``save_pretrained`` dir (model + processor + generation config).

    With ``output_dir=None`` the result goes to the cache and an existing complete conversion is
    reused. The output is built in a temp sibling and renamed into place, so a killed conversion never
    leaves a half-written directory that a later load would trust.
    """
    ct2_dir = Path(ct2_dir)
    root = Path(cache_root) if cache_root is not None else default_cache_dir()
    for needed, fix in (
        (CT2_MODEL_FILE, "it is not a CTranslate2 model dir"),
        (TOKENIZER_FILE, "copy the original model's tokenizer.json next to model.bin "
                         "(ct2-transformers-converter --copy_files tokenizer.json)"),
    ):
        if not (ct2_dir / needed).is_file():
            raise TeacherLoadError(f"{ct2_dir} has no {needed}; {fix}")
    digest = file_sha256(ct2_dir / CT2_MODEL_FILE, cache_root=root)
    out = Path(output_dir) if output_dir is not None else root / CONVERTED_SUBDIR / digest[:CACHE_KEY_HEX_CHARS]
    if conversion_is_complete(out) and not overwrite:
        return out
    with atomic_directory(out) as tmp:
        _convert_into(ct2_dir, tmp, digest)
    return out


def _convert_into(ct2_dir: Path, out: Path, digest: str) -> None:
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    ct2_file = read_ct2_model(ct2_dir / CT2_MODEL_FILE)
    ct2_config = read_json(ct2_dir / CT2_CONFIG_FILE, missing_ok=True)  # optional beside model.bin
    state_dict, shapes = whisper_state_dict_from_ct2(ct2_file)
    processor = build_whisper_processor(
        ct2_dir / TOKENIZER_FILE, num_mel_bins=shapes["num_mel_bins"], vocab_size=shapes["vocab_size"]
    )
    ids = special_token_ids(processor.tokenizer)
    config = WhisperConfig(
        **shapes,
        decoder_start_token_id=ids[SOT_TOKEN],
        bos_token_id=ids[EOT_TOKEN],
        eos_token_id=ids[EOT_TOKEN],
        pad_token_id=ids[EOT_TOKEN],
        activation_function="gelu",
        scale_embedding=False,
        suppress_tokens=None,
        begin_suppress_tokens=None,
    )
    model = WhisperForConditionalGeneration(config)
    result = model.load_state_dict(state_dict, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise TeacherLoadError(
            f"converted weights do not fit WhisperForConditionalGeneration: missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )
    if not config.tie_word_embeddings:
        model.proj_out.weight.data.copy_(state_dict["proj_out.weight"])
    model.generation_config = build_generation_config(
        processor.tokenizer, ct2_config, vocab_size=shapes["vocab_size"],
        decoder_layers=shapes["decoder_layers"], decoder_attention_heads=shapes["decoder_attention_heads"],
        max_target_positions=shapes["max_target_positions"],
    )
    model.eval()
    model.save_pretrained(out)
    processor.save_pretrained(out)
    atomic_write_json(out / CONVERSION_MARKER, {
        "format_version": CONVERSION_FORMAT_VERSION,
        "source": str(ct2_dir.resolve()),
        "source_sha256": digest,
        "ct2_binary_version": ct2_file.binary_version,
        "ct2_spec": f"{ct2_file.spec_name}@{ct2_file.spec_revision}",
    })
