"""Every `speechkd` command documents every flag, shows examples that parse, and reports errors the same way."""

import argparse
import shlex
import subprocess
import sys

import pytest

from speechkd.cli import build_parser, main
from speechkd.errors import EXIT_INTERNAL_ERROR


def _subparsers(parser: argparse.ArgumentParser, path=()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _subparsers(sub, (*path, name))
    if path:
        yield path, parser


COMMANDS = list(_subparsers(build_parser()))


def test_every_command_is_listed():
    names = {" ".join(path) for path, _ in COMMANDS}
    assert {"synth", "label", "filter", "lm", "train", "student create", "eval", "report", "export", "verify"} <= names


@pytest.mark.parametrize("path,parser", COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_every_flag_has_help_and_every_command_an_example(path, parser):
    # A config flag's help is "<the field's comment> (default: ...)": one that starts with "(default" has no comment.
    undocumented = [a.option_strings or a.dest for a in parser._actions
                    if not (a.help or "").strip() or a.help.startswith("(default")]
    assert not undocumented, f"speechkd {' '.join(path)}: flags without help text: {undocumented}"
    assert parser.epilog and "examples:" in parser.epilog
    assert getattr(parser, "examples", None)


@pytest.mark.parametrize("path,parser", COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_examples_parse(path, parser):
    for example in parser.examples:
        words = shlex.split(example.split("  #")[0])
        args = words[words.index("speechkd") + 1:]
        build_parser().parse_args(args)  # raises SystemExit on a flag that does not exist


@pytest.mark.parametrize("path", [p for p, _ in COMMANDS], ids=[" ".join(p) for p, _ in COMMANDS])
def test_python_m_speechkd_help(path):
    proc = subprocess.run([sys.executable, "-m", "speechkd", *path, "--help"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "examples:" in proc.stdout


def test_booleans_are_switches_and_choices_are_checked(capsys):
    parser = build_parser()
    assert parser.parse_args(["eval", "--data", "d", "--no-warmup"]).warmup is False
    assert parser.parse_args(["eval", "--data", "d", "--greedy"]).greedy is True
    assert parser.parse_args(["eval", "--data", "d"]).greedy is None  # not given: the config's value stands
    for bad in (["eval", "--greedy", "ture"], ["eval", "--backend", "onnx"], ["train", "--train.scheduler", "step"]):
        with pytest.raises(SystemExit) as e:
            parser.parse_args(bad)
        assert e.value.code == 2
    assert "not one of" in capsys.readouterr().err


def test_flags_layer_over_yaml_and_set(tmp_path):
    from speechkd.cli import config_from_args
    from speechkd.train import RunConfig

    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("labels: a.jsonl\ntrain: {max_steps: 5, lr: 0.01}\nstudent: {decoder_layers: 2}\n")
    args = build_parser().parse_args(["train", "--out", "o", "--config", str(yaml_file), "--set", "train.lr=0.5",
                                      "--train.max-steps", "7", "--set", "student.encoder_layers=1",
                                      "--init-from", "none"])
    cfg = config_from_args(RunConfig, args)
    assert (cfg.labels, cfg.train.max_steps, cfg.train.lr) == ("a.jsonl", 7, 0.5)
    assert cfg.student == {"decoder_layers": 2, "encoder_layers": 1} and cfg.init_from is None


def test_user_errors_are_one_line_and_debug_shows_the_traceback(tmp_path, capsys):
    bad = ["lm", "--text", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "lm.arpa")]
    assert main(bad) == 2
    err = capsys.readouterr().err
    assert "missing.txt" in err and "Traceback" not in err and err.count("\n") == 1
    assert main(["--debug", *bad]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_a_bug_is_exit_code_3_with_its_traceback(monkeypatch, capsys):
    def broken(args):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr("speechkd.cli.evaluate.cmd_report", broken)  # build_parser reads it at call time
    assert main(["report", "x"]) == EXIT_INTERNAL_ERROR
    err = capsys.readouterr().err
    assert "Traceback" in err and "ZeroDivisionError" in err and "a bug" in err
