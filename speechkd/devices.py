"""Where training runs: device choice, mixed precision, and moving batches there.

CPU is the default and what the tests run. On CUDA, `bf16` autocasts the forward pass to bfloat16 (no loss
scaling needed: bf16 has fp32's exponent range); `fp16` autocasts to float16 and scales the loss so small
gradients do not underflow (torch.amp.GradScaler), skipping a step whose gradients overflowed. Parameters and
optimizer state stay fp32 either way, so checkpoints are the same whichever precision trained them.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from typing import Any, Literal

import torch

from speechkd.errors import SpeechkdError

Precision = Literal["fp32", "bf16", "fp16"]
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class DeviceError(SpeechkdError, ValueError):
    """A device or precision this machine cannot provide; the message names the fix."""


def resolve_device(name: str) -> torch.device:
    """`auto` (CUDA when available, else CPU), `cpu`, `cuda`, `cuda:N` or `mps`; under torchrun a bare `cuda`
    (or `auto` on a GPU machine) is this process's GPU, LOCAL_RANK."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and "LOCAL_RANK" in os.environ:
        name = f"cuda:{int(os.environ['LOCAL_RANK'])}"
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise DeviceError(f"device {name!r}: {e}; use auto, cpu, cuda, cuda:N or mps") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {name!r}: this torch build sees no CUDA GPU (torch {torch.__version__}); use "
                          f"device: cpu, or install a CUDA build of torch")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"device {name!r}: MPS is not available on this machine; use device: cpu")
    if device.type not in ("cpu", "cuda", "mps"):
        raise DeviceError(f"device {name!r}: only cpu, cuda and mps are supported")
    return device


def check_precision(device: torch.device, precision: Precision) -> None:
    if precision == "fp16" and device.type == "cpu":
        raise DeviceError("precision fp16 needs a GPU (CPU autocast is bfloat16 only); use precision: bf16 or fp32")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise DeviceError(f"{torch.cuda.get_device_name(device)} has no bfloat16 support; use precision: fp16")


def autocast(device: torch.device, precision: Precision):
    """The forward pass's autocast context (a no-op for fp32)."""
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=AUTOCAST_DTYPES[precision])


def grad_scaler(device: torch.device, precision: Precision) -> torch.amp.GradScaler:
    """Loss scaling for fp16; a pass-through (enabled=False) otherwise."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


def to_device(batch: Any, device: torch.device) -> Any:
    """Tensors of a (nested) batch moved to `device`; everything else (ids, strings) as it is."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)) and any(isinstance(v, torch.Tensor) for v in batch):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def dist_backend(device: torch.device) -> str:
    """NCCL between GPUs, gloo between CPU processes."""
    return "nccl" if device.type == "cuda" else "gloo"
