"""Distillation losses, each a pure function of tensors (no model, no config objects).

Conventions: logits are [B, L, V]; `mask` is [B, L] bool, True where a position counts; every loss returns
a scalar averaged over counted positions (or utterances for CTC), so that its weight in a sum means the same
thing whatever the batch shape.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100  # label value for positions that carry no target (HF convention)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Token-level CE against (pseudo-)labels; positions labelled `ignore_index` do not count."""
    return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=ignore_index)


def kl_divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor,
                  temperature: float = 2.0) -> torch.Tensor:
    """T²·KL(teacher ‖ student) at temperature T, averaged over the masked positions.

    The T² factor (Hinton et al.) keeps the gradient scale of the soft term independent of T, which is
    what makes Distil-Whisper's weights (0.8 CE, 1.0 KL, T = 2) transferable between setups.
    """
    t = float(temperature)
    s = F.log_softmax(student_logits.float() / t, dim=-1)
    p = F.log_softmax(teacher_logits.float() / t, dim=-1)
    kl = (p.exp() * (p - s)).sum(-1)  # [B, L]
    return _masked_mean(kl, mask) * t * t


def hidden_state_loss(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor,
                      cosine_weight: float = 1.0) -> torch.Tensor:
    """DistilHuBERT's layer target: L1 minus λ·log σ(cos) per frame, averaged over valid frames ([B, T, D])."""
    l1 = (student.float() - teacher.float()).abs().mean(-1)
    cos = F.cosine_similarity(student.float(), teacher.float(), dim=-1)
    return _masked_mean(l1 - cosine_weight * F.logsigmoid(cos), mask)


def ctc_loss(log_probs: torch.Tensor, input_lengths: torch.Tensor, targets: torch.Tensor,
             target_lengths: torch.Tensor, blank: int = 0) -> torch.Tensor:
    """CTC over [B, T, V] log-probabilities and padded targets [B, S], summed per utterance then averaged
    over utterances divided by the mean target length (icefall's per-token scale, robust to batch composition).

    Utterances with more labels than frames give an infinite loss; they are zeroed here (`zero_infinity`)
    but tasks are expected to drop them earlier with a reason in the skip list.
    """
    per_utt = F.ctc_loss(log_probs.float().transpose(0, 1), targets, input_lengths, target_lengths, blank=blank,
                         reduction="none", zero_infinity=True)
    return per_utt.sum() / target_lengths.sum().clamp_min(1).to(per_utt.dtype)


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor | None, labels: torch.Tensor,
                      *, ce_weight: float = 0.8, kl_weight: float = 1.0, temperature: float = 2.0,
                      ignore_index: int = IGNORE_INDEX) -> tuple[torch.Tensor, dict[str, float]]:
    """Distil-Whisper's objective: ce_weight·CE(pseudo-labels) + kl_weight·T²·KL(teacher ‖ student)."""
    ce = cross_entropy(student_logits, labels, ignore_index)
    logs = {"ce": float(ce.detach())}
    total = ce_weight * ce
    if kl_weight > 0:
        if teacher_logits is None:
            raise ValueError("kl_weight > 0 needs teacher logits")
        kl = kl_divergence(student_logits, teacher_logits, labels != ignore_index, temperature)
        logs["kl"] = float(kl.detach())
        total = total + kl_weight * kl
    return total, logs
