"""Small wav2vec2 / HuBERT CTC students on raw waveforms (transformers Wav2Vec2ForCTC / HubertForCTC).

The architecture is the "stable layer norm" variant (feature encoder with LayerNorm, pre-LN transformer),
the one that honours attention masks: with GroupNorm over time (wav2vec2-base) a padded batch would not
compute what each utterance computes alone. LayerDrop and HF's internal SpecAugment default to off so the
training loss stays a pure function of the batch (and DDP sees every parameter used); the ctc task
augments inputs itself.

``pretrained`` may name a local save_pretrained dir of a wav2vec2/HuBERT model to start from (the CTC head is
replaced to fit our vocabulary). Saved students rebuild from the HF config stored in config.json.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from speechkd.students import StudentError
from speechkd.students.ctc import CTCModel, length_mask, register_ctc_student, require_vocab
from speechkd_runtime.features import make_frontend


@dataclass(frozen=True)
class Wav2Vec2CTCConfig:
    hidden_size: int = 256
    num_layers: int = 6
    num_heads: int = 4
    intermediate_size: int = 1024
    conv_dim: tuple[int, ...] = (256, 256, 256, 256, 256, 256, 256)
    conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
    conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)  # x320: 20 ms output frames
    num_conv_pos_embeddings: int = 128
    num_conv_pos_embedding_groups: int = 16
    dropout: float = 0.1
    layerdrop: float = 0.0
    mask_time_prob: float = 0.0  # HF's own SpecAugment (numpy RNG inside the model); the task masks inputs instead
    pretrained: str | None = None  # local HF dir of a wav2vec2/HuBERT to initialise from (its architecture wins)

    def validate(self) -> None:
        if not (len(self.conv_dim) == len(self.conv_kernel) == len(self.conv_stride)) or not self.conv_dim:
            raise ValueError("conv_dim, conv_kernel and conv_stride must be non-empty and of equal length")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})")
        if self.hidden_size % self.num_conv_pos_embedding_groups:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be divisible by num_conv_pos_embedding_groups "
                             f"({self.num_conv_pos_embedding_groups})")
        for key in ("dropout", "layerdrop", "mask_time_prob"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise ValueError(f"{key} must be in [0, 1), got {getattr(self, key)}")


_FAMILIES = {"wav2vec2_ctc": "wav2vec2", "hubert_ctc": "hubert"}


def _classes(family: str):
    if family == "wav2vec2":
        from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

        return Wav2Vec2Config, Wav2Vec2ForCTC
    from transformers import HubertConfig, HubertForCTC

    return HubertConfig, HubertForCTC


class HFWaveformCTC(CTCModel):
    """Wraps Wav2Vec2ForCTC / HubertForCTC in the CTC student contract (waveform in, log-probs out)."""

    def __init__(self, hf_model, vocab):
        stride = math.prod(hf_model.config.conv_stride)
        super().__init__(make_frontend("waveform", normalize=True), vocab, subsampling_factor=stride)
        self.hf = hf_model

    def output_lengths(self, in_lens: torch.Tensor) -> torch.Tensor:
        lens = in_lens
        for k, s in zip(self.hf.config.conv_kernel, self.hf.config.conv_stride):
            lens = torch.div(lens - k, s, rounding_mode="floor") + 1
        return lens.clamp(min=0)

    def extra_config(self) -> dict:
        return {"hf_config": self.hf.config.to_dict()}

    @property
    def num_layers(self) -> int:
        return self.hf.config.num_hidden_layers

    @property
    def hidden_size(self) -> int:
        return self.hf.config.hidden_size

    def forward(self, x: torch.Tensor, x_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden, lens = self.hidden_states(x, x_lens, [self.num_layers])
        logits = self.hf.lm_head(self.hf.dropout(hidden[self.num_layers]))  # what *ForCTC.forward does
        return logits.float().log_softmax(dim=-1), lens

    def hidden_states(self, x: torch.Tensor, x_lens: torch.Tensor, layers: list[int]):
        """{layer: [B, T', d]}: 0 is the feature projection fed to the transformer, L its final output
        (last_hidden_state, after the final LayerNorm: the indexing of speechkd.teachers.encoders)."""
        mask = length_mask(x_lens, x.shape[1]).to(torch.int64)
        base = getattr(self.hf, self.hf.base_model_prefix)
        inner = [i for i in layers if i != self.num_layers]
        out = base(input_values=x, attention_mask=mask, output_hidden_states=bool(inner))
        hidden = {i: out.hidden_states[i] for i in inner}
        if self.num_layers in layers:
            hidden[self.num_layers] = out.last_hidden_state
        return hidden, self.output_lengths(x_lens).to(torch.int64)


def _hf_config(family: str, cfg: Wav2Vec2CTCConfig, vocab_size: int):
    config_cls, _ = _classes(family)
    return config_cls(
        vocab_size=vocab_size, pad_token_id=0, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads, intermediate_size=cfg.intermediate_size, conv_dim=list(cfg.conv_dim),
        conv_kernel=list(cfg.conv_kernel), conv_stride=list(cfg.conv_stride), conv_bias=True,
        num_conv_pos_embeddings=cfg.num_conv_pos_embeddings, num_conv_pos_embedding_groups=cfg.num_conv_pos_embedding_groups,
        feat_extract_norm="layer", do_stable_layer_norm=True, hidden_dropout=cfg.dropout,
        attention_dropout=cfg.dropout, activation_dropout=cfg.dropout, feat_proj_dropout=cfg.dropout,
        final_dropout=cfg.dropout, layerdrop=cfg.layerdrop, mask_time_prob=cfg.mask_time_prob,
        apply_spec_augment=cfg.mask_time_prob > 0, ctc_zero_infinity=True,
    )


def _builder(name: str):
    family = _FAMILIES[name]

    def build(cfg: Wav2Vec2CTCConfig, teacher=None, vocab=None) -> HFWaveformCTC:
        vocab = require_vocab(vocab, name)
        _, model_cls = _classes(family)
        if cfg.pretrained:
            try:
                hf = model_cls.from_pretrained(cfg.pretrained, vocab_size=len(vocab), pad_token_id=0,
                                               ignore_mismatched_sizes=True, layerdrop=cfg.layerdrop,
                                               mask_time_prob=cfg.mask_time_prob, ctc_zero_infinity=True)
            except OSError as e:
                raise StudentError(f"{name}: cannot load pretrained={cfg.pretrained!r}: {e}") from e
            if hf.config.feat_extract_norm != "layer":
                raise StudentError(f"{name}: {cfg.pretrained} uses feat_extract_norm={hf.config.feat_extract_norm!r}; "
                                   f"batched CTC needs a 'layer' (stable layer norm) model such as wav2vec2-large-lv60")
        else:
            hf = model_cls(_hf_config(family, cfg, len(vocab)))
        return HFWaveformCTC(hf, vocab)

    def from_saved(cfg: Wav2Vec2CTCConfig, vocab, saved: dict) -> HFWaveformCTC:
        config_cls, model_cls = _classes(family)
        if "hf_config" not in saved:
            raise StudentError(f"config.json of a {name} student lacks 'hf_config'; re-save it")
        return HFWaveformCTC(model_cls(config_cls.from_dict(saved["hf_config"])), vocab)

    return build, from_saved


for _name, _desc in (("wav2vec2_ctc", "small Wav2Vec2ForCTC on raw 16 kHz waveform (x320)"),
                     ("hubert_ctc", "small HubertForCTC on raw 16 kHz waveform (x320)")):
    _build, _from_saved = _builder(_name)
    register_ctc_student(_name, Wav2Vec2CTCConfig, _build, _from_saved, _desc)
