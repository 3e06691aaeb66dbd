import dataclasses
from typing import Literal

import pytest

from speechkd.config import ConfigError, load_config, save_config
from speechkd.io import JsonlWriter, atomic_write_text, read_jsonl


@dataclasses.dataclass(frozen=True)
class Inner:
    lr: float = 1e-3


@dataclasses.dataclass(frozen=True)
class Cfg:
    name: str = "x"
    steps: int = 10
    mode: Literal["a", "b"] = "a"
    layers: tuple[int, ...] = (1, 2)
    snr: float | None = None
    inner: Inner = Inner()

    def validate(self):
        if self.steps <= 0:
            raise ValueError("steps must be positive")


def test_yaml_roundtrip(tmp_path):
    cfg = load_config(Cfg, None, steps=5, layers=[3], inner={"lr": 2})
    assert cfg.layers == (3,) and cfg.inner.lr == 2.0
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(Cfg, tmp_path / "c.yaml") == cfg


def test_yaml_1_1_exponent_floats_are_numbers(tmp_path):
    """PyYAML reads `lr: 1e-3` (no dot) as a string; a float field takes it as the number the user meant."""
    p = tmp_path / "c.yaml"
    p.write_text("inner:\n  lr: 1e-3\n")
    assert load_config(Cfg, p).inner.lr == 1e-3
    p.write_text("inner:\n  lr: fast\n")
    with pytest.raises(ConfigError, match="should be a number"):
        load_config(Cfg, p)


@pytest.mark.parametrize(
    "text,needle",
    [("stepz: 3", "unknown key"), ("steps: two", "integer"), ("mode: c", "choose one of"),
     ("steps: 0", "positive"), ("- a", "mapping"), ("steps: [", "YAML")],
)
def test_bad_configs(tmp_path, text, needle):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=needle) as e:
        load_config(Cfg, p)
    assert str(p) in str(e.value)


def test_jsonl_torn_tail_is_dropped_and_repaired(tmp_path):
    p = tmp_path / "x.jsonl"
    with JsonlWriter(p) as w:
        w.write({"id": "a"})
    with open(p, "a") as f:
        f.write('{"id": "b", "te')  # a writer killed mid-line
    assert [r["id"] for r in read_jsonl(p)] == ["a"]
    with JsonlWriter(p) as w:  # appending again first cuts the torn line
        w.write({"id": "c"})
    assert [r["id"] for r in read_jsonl(p)] == ["a", "c"]


def test_atomic_write_leaves_no_temp(tmp_path):
    atomic_write_text(tmp_path / "f.txt", "hello")
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]
