"""Device choice, precision checks and batch moving (the CPU side; the CUDA path needs a GPU)."""

import pytest
import torch

from speechkd.devices import DeviceError, autocast, check_precision, grad_scaler, resolve_device, to_device


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(DeviceError, match="use auto, cpu, cuda"):
        resolve_device("tpu0")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="no CUDA GPU"):
            resolve_device("cuda:1")


def test_precision_rules_and_contexts():
    cpu = torch.device("cpu")
    with pytest.raises(DeviceError, match="fp16 needs a GPU"):
        check_precision(cpu, "fp16")
    check_precision(cpu, "bf16")
    assert not grad_scaler(cpu, "bf16").is_enabled()
    with autocast(cpu, "bf16"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with autocast(cpu, "fp32"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_to_device_moves_nested_tensors_and_keeps_the_rest():
    batch = {"ids": ["a", "b"], "x": torch.ones(2), "targets": {3: torch.zeros(1)}, "pair": (torch.ones(1), 2)}
    moved = to_device(batch, torch.device("cpu"))
    assert moved["ids"] == ["a", "b"] and isinstance(moved["targets"][3], torch.Tensor) and moved["pair"][1] == 2
