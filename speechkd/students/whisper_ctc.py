"""A teacher-initialised CTC student: the Whisper teacher's encoder front end + first k layers + a CTC head.

Whisper's encoder insists on 30-s inputs because it was trained that way, but nothing in its weights needs
it: the convolutions are local and the positional table is indexed by frame. This student slices the
positional table to the real length and masks padded frames in attention, so a 3-s clip costs 3 s of
compute (a 10x saving on short commands, the point on a device). Input: whisper_log_mel on the real length.

Config ``teacher`` names the Whisper teacher (any load_whisper spec); ``num_layers`` how many of its encoder
layers to keep. Saved students rebuild from the Whisper encoder config stored in config.json, so loading
needs neither the teacher nor network access.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from speechkd.students import StudentError
from speechkd.students.ctc import CTCModel, length_mask, register_ctc_student, require_vocab
from speechkd_runtime.audio import SAMPLE_RATE_HZ
from speechkd_runtime.features import FRAME_SHIFT, make_frontend

# WhisperConfig fields that define the encoder; saved in config.json to rebuild without the teacher.
_ENCODER_KEYS = ("d_model", "encoder_layers", "encoder_attention_heads", "encoder_ffn_dim", "num_mel_bins",
                 "max_source_positions", "activation_function", "scale_embedding")


@dataclass(frozen=True)
class WhisperEncoderCTCConfig:
    teacher: str = "bundled:tiny.en"
    num_layers: int = 4  # the teacher's first k encoder layers (tiny/tiny.en have 4: ~7.6 M parameters)
    dropout: float = 0.1  # on residual branches and before the CTC head (Whisper itself trains with 0)

    def validate(self) -> None:
        if self.num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {self.num_layers}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not self.teacher:
            raise ValueError("teacher is required (e.g. 'bundled:tiny.en'): the student starts from its encoder")


class WhisperEncoderCTC(CTCModel):
    def __init__(self, whisper_config, vocab, dropout: float = 0.1):
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        frontend = make_frontend("whisper_mel", num_mel_bins=whisper_config.num_mel_bins, pad_to_seconds=None)
        super().__init__(frontend, vocab, subsampling_factor=2)
        self.whisper_config = whisper_config
        self.encoder = WhisperEncoder(whisper_config)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(whisper_config.d_model, len(vocab))
        self.max_input_seconds = whisper_config.max_source_positions * 2 * FRAME_SHIFT / SAMPLE_RATE_HZ

    def output_lengths(self, in_lens: torch.Tensor) -> torch.Tensor:
        return torch.div(in_lens + 1, 2, rounding_mode="floor")  # conv2: kernel 3, stride 2, padding 1

    def extra_config(self) -> dict:
        return {"whisper_encoder": {k: getattr(self.whisper_config, k) for k in _ENCODER_KEYS}}

    @property
    def num_layers(self) -> int:
        return len(self.encoder.layers)

    @property
    def hidden_size(self) -> int:
        return self.whisper_config.d_model

    def forward(self, x: torch.Tensor, x_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden, lens = self.hidden_states(x, x_lens, [self.num_layers])
        logits = self.head(self.dropout(hidden[self.num_layers]))
        return logits.float().log_softmax(dim=-1), lens

    def hidden_states(self, x: torch.Tensor, x_lens: torch.Tensor, layers: list[int]):
        """{layer: [B, T', d]}: 0 is the conv front end + positions, L the encoder output after its final LayerNorm
        (the indexing of the Whisper encoder teacher, speechkd.teachers.encoders)."""
        enc = self.encoder
        feats = x.transpose(1, 2)  # [B, mels, T]
        in_valid = length_mask(x_lens, feats.shape[2])
        h = F.gelu(enc.conv1(feats))
        # Zero the padding so conv2 sees what a lone utterance sees (its own zero padding).
        h = h * in_valid[:, None, :].to(h.dtype)
        h = F.gelu(enc.conv2(h)).transpose(1, 2)  # [B, T', d]
        lens = self.output_lengths(x_lens).to(torch.int64)
        t = h.shape[1]
        h = h + enc.embed_positions.weight[:t]  # HF applies no embed_scale in the encoder
        valid = length_mask(lens, t)
        out = {0: h} if 0 in layers else {}
        for i, layer in enumerate(enc.layers, start=1):
            h = self._layer(layer, h, valid)
            if i in layers:
                out[i] = enc.layer_norm(h) if i == self.num_layers else h
            if i >= max(layers):
                break
        return out, lens

    def _layer(self, layer, h: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        # WhisperEncoderLayer's computation written out with an explicit key-padding mask (the HF encoder
        # ignores masks), eager attention only, so it exports to ONNX as plain ops.
        att = layer.self_attn
        b, t, d = h.shape
        heads = att.num_heads
        x = layer.self_attn_layer_norm(h)
        q = (att.q_proj(x) * att.scaling).reshape(b, t, heads, -1).transpose(1, 2)
        k = att.k_proj(x).reshape(b, t, heads, -1).transpose(1, 2)
        v = att.v_proj(x).reshape(b, t, heads, -1).transpose(1, 2)
        scores = torch.matmul(q, k.transpose(-1, -2))
        scores = scores.masked_fill(~valid[:, None, None, :], torch.finfo(scores.dtype).min)
        ctx = torch.matmul(scores.softmax(dim=-1), v).transpose(1, 2).reshape(b, t, d)
        h = h + self.dropout(att.out_proj(ctx))
        x = layer.final_layer_norm(h)
        x = layer.fc2(layer.activation_fn(layer.fc1(x)))
        return h + self.dropout(x)


def _encoder_config(source: dict, num_layers: int):
    from transformers import WhisperConfig

    kwargs = {k: source[k] for k in _ENCODER_KEYS if k in source}
    kwargs["encoder_layers"] = num_layers
    cfg = WhisperConfig(**kwargs)
    cfg._attn_implementation = "eager"
    return cfg


def build_whisper_encoder_ctc(cfg: WhisperEncoderCTCConfig, teacher=None, vocab=None) -> WhisperEncoderCTC:
    vocab = require_vocab(vocab, "whisper_encoder_ctc")
    if teacher is None:
        from speechkd.teachers import load_whisper

        teacher = load_whisper(cfg.teacher)
    # A WhisperTeacher, or a transformers Whisper model itself.
    hf = teacher if hasattr(teacher, "get_encoder") else teacher.model
    teacher_cfg = hf.config
    if cfg.num_layers > teacher_cfg.encoder_layers:
        raise StudentError(f"whisper_encoder_ctc: num_layers {cfg.num_layers} > the teacher's "
                           f"{teacher_cfg.encoder_layers} encoder layers ({cfg.teacher}); choose 1..{teacher_cfg.encoder_layers}")
    model = WhisperEncoderCTC(_encoder_config(teacher_cfg.to_dict(), cfg.num_layers), vocab, cfg.dropout)
    source = hf.get_encoder().state_dict()
    kept = {k: v for k, v in source.items()
            if not k.startswith("layers.") or int(k.split(".")[1]) < cfg.num_layers}
    missing, unexpected = model.encoder.load_state_dict(kept, strict=False)
    if missing or unexpected:
        raise StudentError(f"whisper_encoder_ctc: teacher encoder weights do not fit (missing {missing[:3]}, "
                           f"unexpected {unexpected[:3]})")
    return model


def _from_saved(cfg: WhisperEncoderCTCConfig, vocab, saved: dict) -> WhisperEncoderCTC:
    enc = saved.get("whisper_encoder")
    if not enc:
        raise StudentError("config.json of a whisper_encoder_ctc student lacks 'whisper_encoder'; re-save it")
    return WhisperEncoderCTC(_encoder_config(enc, enc["encoder_layers"]), vocab, cfg.dropout)


register_ctc_student("whisper_encoder_ctc", WhisperEncoderCTCConfig, build_whisper_encoder_ctc, _from_saved,
                     "Whisper teacher's conv front end + first k encoder layers on the real length + CTC head")
