"""Compact Conformer-CTC and Transformer-CTC students over Kaldi fbank features (sherpa-onnx's front end).

Conv2d subsampling (x4, 40 ms output frames) -> N blocks -> LayerNorm -> Linear -> log-softmax.
Conformer block (Gulati et al. 2020): x + FFN/2, + MHSA, + conv module, + FFN/2, LayerNorm.
Transformer block: pre-LN x + MHSA, + FFN.
Positions are rotary (RoPE, relative: attention depends on offsets only, so utterances longer than any seen
in training behave) or absolute sinusoidal. The conv module uses LayerNorm instead of BatchNorm, so a padded
batch computes exactly what each utterance computes alone (padding is zeroed before every convolution).

Defaults: conformer_ctc ~6 M parameters (d 144, 12 layers, Conformer-S width), transformer_ctc ~6.5 M
(d 256, 8 layers), both with a 30-60 char vocabulary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from speechkd.students.ctc import CTCModel, length_mask, register_ctc_student, require_vocab
from speechkd_runtime.features import make_frontend


@dataclass(frozen=True)
class ConformerCTCConfig:
    d_model: int = 144
    num_layers: int = 12
    num_heads: int = 4
    ffn_dim: int = 576
    conv_kernel: int = 31
    dropout: float = 0.1
    num_mel_bins: int = 80
    subsampling_channels: int = 64
    pos_encoding: Literal["rope", "sinusoidal"] = "rope"

    def validate(self) -> None:
        _validate_common(self)
        if self.conv_kernel < 1 or self.conv_kernel % 2 == 0:
            raise ValueError(f"conv_kernel must be odd (symmetric padding), got {self.conv_kernel}")


@dataclass(frozen=True)
class TransformerCTCConfig:
    d_model: int = 256
    num_layers: int = 8
    num_heads: int = 4
    ffn_dim: int = 1024
    dropout: float = 0.1
    num_mel_bins: int = 80
    subsampling_channels: int = 64
    pos_encoding: Literal["rope", "sinusoidal"] = "rope"

    def validate(self) -> None:
        _validate_common(self)


def _validate_common(cfg) -> None:
    for key in ("d_model", "num_layers", "num_heads", "ffn_dim", "subsampling_channels"):
        if getattr(cfg, key) < 1:
            raise ValueError(f"{key} must be >= 1, got {getattr(cfg, key)}")
    if cfg.d_model % cfg.num_heads:
        raise ValueError(f"d_model ({cfg.d_model}) must be divisible by num_heads ({cfg.num_heads})")
    if cfg.pos_encoding == "rope" and (cfg.d_model // cfg.num_heads) % 2:
        raise ValueError(f"rope needs an even head dimension; d_model/num_heads = {cfg.d_model // cfg.num_heads}")
    if cfg.num_mel_bins < 7:
        raise ValueError(f"num_mel_bins must be >= 7 for the x4 conv subsampling, got {cfg.num_mel_bins}")
    if not 0.0 <= cfg.dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {cfg.dropout}")


# --------------------------------------------------------------------------------------------- layers


class Conv2dSubsampling(nn.Module):
    """Two 3x3 stride-2 convolutions without padding: an output frame only sees valid input frames."""

    def __init__(self, num_mel_bins: int, channels: int, d_model: int):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(1, channels, 3, 2), nn.ReLU(), nn.Conv2d(channels, channels, 3, 2), nn.ReLU())
        freq = ((num_mel_bins - 1) // 2 - 1) // 2
        self.out = nn.Linear(channels * freq, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x.unsqueeze(1))  # [B, C, T', F']
        return self.out(h.permute(0, 2, 1, 3).flatten(2))

    @staticmethod
    def output_lengths(lens: torch.Tensor) -> torch.Tensor:
        once = torch.div(lens - 1, 2, rounding_mode="floor")
        return torch.div(once - 1, 2, rounding_mode="floor").clamp(min=0)


def rotary_tables(num_frames: int, head_dim: int, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    t = torch.arange(num_frames, device=inv_freq.device, dtype=inv_freq.dtype)
    freqs = t[:, None] * inv_freq[None, :]
    angles = torch.cat([freqs, freqs], dim=-1)  # [T, head_dim]
    return angles.cos(), angles.sin()


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


def sinusoidal_positions(num_frames: int, d_model: int, device=None) -> torch.Tensor:
    t = torch.arange(num_frames, device=device, dtype=torch.float32)[:, None]
    inv = torch.exp(torch.arange(0, d_model, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    # Interleaved sin/cos (no in-place slice writes, which export less cleanly).
    return torch.stack([torch.sin(t * inv), torch.cos(t * inv)], dim=-1).flatten(1)[:, :d_model]


class SelfAttention(nn.Module):
    """Multi-head self-attention written out (matmul + softmax) so it exports to ONNX as plain ops."""

    def __init__(self, d_model: int, num_heads: int, dropout: float):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, valid: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        b, t = x.shape[0], x.shape[1]
        q, k, v = self.qkv(x).reshape(b, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if rope is not None:
            q, k = _rotate(q, *rope), _rotate(k, *rope)
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim)
        # finfo.min rather than -inf: a row with every key masked stays finite (uniform) instead of NaN.
        scores = scores.masked_fill(~valid[:, None, None, :], torch.finfo(scores.dtype).min)
        att = self.dropout(scores.softmax(dim=-1))
        return self.out(torch.matmul(att, v).transpose(1, 2).reshape(b, t, -1))


class FeedForward(nn.Module):
    def __init__(self, d_model: int, ffn_dim: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(d_model), nn.Linear(d_model, ffn_dim), nn.SiLU(), nn.Dropout(dropout),
                                 nn.Linear(ffn_dim, d_model), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ConvModule(nn.Module):
    def __init__(self, d_model: int, kernel: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.pointwise_in = nn.Linear(d_model, 2 * d_model)
        self.depthwise = nn.Conv1d(d_model, d_model, kernel, padding=kernel // 2, groups=d_model)
        self.mid_norm = nn.LayerNorm(d_model)
        self.pointwise_out = nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        h = F.glu(self.pointwise_in(self.norm(x)), dim=-1)
        h = h * valid[:, :, None].to(h.dtype)  # padding must look like the conv's own zero padding
        h = self.depthwise(h.transpose(1, 2)).transpose(1, 2)
        return self.dropout(self.pointwise_out(F.silu(self.mid_norm(h))))


class ConformerBlock(nn.Module):
    def __init__(self, cfg: ConformerCTCConfig):
        super().__init__()
        d = cfg.d_model
        self.ffn1 = FeedForward(d, cfg.ffn_dim, cfg.dropout)
        self.att_norm = nn.LayerNorm(d)
        self.att = SelfAttention(d, cfg.num_heads, cfg.dropout)
        self.att_dropout = nn.Dropout(cfg.dropout)
        self.conv = ConvModule(d, cfg.conv_kernel, cfg.dropout)
        self.ffn2 = FeedForward(d, cfg.ffn_dim, cfg.dropout)
        self.out_norm = nn.LayerNorm(d)

    def forward(self, x, valid, rope):
        x = x + 0.5 * self.ffn1(x)
        x = x + self.att_dropout(self.att(self.att_norm(x), valid, rope))
        x = x + self.conv(x, valid)
        x = x + 0.5 * self.ffn2(x)
        return self.out_norm(x)


class TransformerBlock(nn.Module):
    def __init__(self, cfg: TransformerCTCConfig):
        super().__init__()
        self.att_norm = nn.LayerNorm(cfg.d_model)
        self.att = SelfAttention(cfg.d_model, cfg.num_heads, cfg.dropout)
        self.att_dropout = nn.Dropout(cfg.dropout)
        self.ffn = FeedForward(cfg.d_model, cfg.ffn_dim, cfg.dropout)

    def forward(self, x, valid, rope):
        x = x + self.att_dropout(self.att(self.att_norm(x), valid, rope))
        return x + self.ffn(x)


# --------------------------------------------------------------------------------------------- model


class FbankEncoderCTC(CTCModel):
    """Conv2d subsampling + a stack of blocks + CTC head; `block` picks Conformer or Transformer."""

    def __init__(self, cfg: ConformerCTCConfig | TransformerCTCConfig, vocab, block: str):
        super().__init__(make_frontend("fbank", num_mel_bins=cfg.num_mel_bins), vocab, subsampling_factor=4)
        self.block_kind = block
        self.pos_encoding = cfg.pos_encoding
        self.d_model = cfg.d_model
        self.head_dim = cfg.d_model // cfg.num_heads
        self.subsampling = Conv2dSubsampling(cfg.num_mel_bins, cfg.subsampling_channels, cfg.d_model)
        self.input_dropout = nn.Dropout(cfg.dropout)
        block_cls = ConformerBlock if block == "conformer" else TransformerBlock
        self.blocks = nn.ModuleList([block_cls(cfg) for _ in range(cfg.num_layers)])
        self.final_norm = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, len(vocab))
        inv_freq = 1.0 / (10000.0 ** (torch.arange(0, self.head_dim, 2, dtype=torch.float32) / self.head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def output_lengths(self, in_lens: torch.Tensor) -> torch.Tensor:
        return Conv2dSubsampling.output_lengths(in_lens)

    @property
    def num_layers(self) -> int:
        return len(self.blocks)

    @property
    def hidden_size(self) -> int:
        return self.d_model

    def forward(self, x: torch.Tensor, x_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden, lens = self.hidden_states(x, x_lens, [self.num_layers])
        logits = self.head(hidden[self.num_layers])
        return logits.float().log_softmax(dim=-1), lens

    def hidden_states(self, x: torch.Tensor, x_lens: torch.Tensor, layers: list[int]):
        """{layer: [B, T', d]} for layers in 0..num_layers (0: subsampled input, L: after the final norm)."""
        h = self.subsampling(x)
        lens = self.output_lengths(x_lens).to(torch.int64)
        t = h.shape[1]
        valid = length_mask(lens, t)
        rope = None
        if self.pos_encoding == "rope":
            rope = rotary_tables(t, self.head_dim, self.inv_freq)
        else:
            h = h * math.sqrt(self.d_model) + sinusoidal_positions(t, self.d_model, h.device)
        h = self.input_dropout(h)
        out = {0: h} if 0 in layers else {}
        for i, block in enumerate(self.blocks, start=1):
            h = block(h, valid, rope)
            if i in layers:
                out[i] = self.final_norm(h) if i == self.num_layers else h
            if i >= max(layers):
                break  # layers above the deepest one asked for are not needed
        return out, lens


def build_conformer(cfg: ConformerCTCConfig, teacher=None, vocab=None) -> FbankEncoderCTC:
    return FbankEncoderCTC(cfg, require_vocab(vocab, "conformer_ctc"), block="conformer")


def build_transformer(cfg: TransformerCTCConfig, teacher=None, vocab=None) -> FbankEncoderCTC:
    return FbankEncoderCTC(cfg, require_vocab(vocab, "transformer_ctc"), block="transformer")


register_ctc_student("conformer_ctc", ConformerCTCConfig, build_conformer,
                     lambda cfg, vocab, saved: build_conformer(cfg, vocab=vocab),
                     "Conformer-CTC over Kaldi fbank (x4 subsampling), trained from scratch")
register_ctc_student("transformer_ctc", TransformerCTCConfig, build_transformer,
                     lambda cfg, vocab, saved: build_transformer(cfg, vocab=vocab),
                     "Transformer-CTC over Kaldi fbank (x4 subsampling), trained from scratch")
