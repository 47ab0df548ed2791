"""Tests of the command line ``python -m ddpm_core``."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from ddpm_core import sampling
from ddpm_core import train as tr
from ddpm_core.__main__ import build_parser, main


pytestmark = pytest.mark.usefixtures("one_thread")


def _options(parser) -> list[str]:
    return [s for a in parser._actions for s in a.option_strings]


@pytest.mark.parametrize("command", ["train", "sample"])
def test_help_exits_0_and_explains_every_option(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    sub = build_parser()._subparsers._group_actions[0].choices[command]
    options = _options(sub)
    assert len(options) > 10
    for opt in options:
        assert opt in text, f"{opt} missing from '{command} --help'"
    for action in sub._actions:  # every option has its own help string
        assert action.help, f"{action.option_strings} has no help"
    if command == "train":  # every TrainConfig field is an option
        for f in tr.TrainConfig.__dataclass_fields__:
            assert "--" + f.replace("_", "-") in text


def test_module_help_runs_as_a_program():
    out = subprocess.run([sys.executable, "-m", "ddpm_core", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "train" in out.stdout and "sample" in out.stdout


def test_train_then_sample_writes_a_checkpoint_and_pngs(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    assert main(["train", "--dataset", "digits", "--preset", "cpu-digits", "--steps", "3", "--batch-size", "8",
                 "--T", "40", "--warmup-steps", "2", "--lr", "1e-3", "--ema-decay", "0.9", "--flip",
                 "--out", str(run), "--no-progress"]) == 0
    raw = tr.read_checkpoint(run / "last.pt")
    assert raw["step"] == 3 and raw["config"]["flip"] is True and raw["config"]["T"] == 40
    assert "trained 3 steps" in capsys.readouterr().out
    for extra in (["--steps", "5"], ["--sampler", "ddim", "--ddim-steps", "4"]):
        png = tmp_path / f"grid{len(extra[-1])}{extra[0]}.png"
        assert main(["sample", "--checkpoint", str(run / "last.pt"), "--n", "4", "--out", str(png),
                     "--no-progress", *extra]) == 0
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # --compile samples through sampling.Compiled: the same grid as eager sampling (torch.compile stubbed:
    # the real compiler is tested in test_sampling)
    wrapped = []
    real = sampling.Compiled.__init__

    def recording(self, net):
        wrapped.append(net)
        real(self, net)
    monkeypatch.setattr(sampling.Compiled, "__init__", recording)
    monkeypatch.setattr(torch, "compile", lambda net, **kw: net)
    pngs = [tmp_path / "eager.png", tmp_path / "compiled.png"]
    for png, extra in zip(pngs, ([], ["--compile"])):
        assert main(["sample", "--checkpoint", str(run / "last.pt"), "--n", "4", "--steps", "5", "--out", str(png),
                     "--no-progress", *extra]) == 0
    assert len(wrapped) == 1 and "compiled" in capsys.readouterr().out.splitlines()[-1]
    assert pngs[0].read_bytes() == pngs[1].read_bytes()
    # a second train with more steps resumes the run
    assert main(["train", "--dataset", "digits", "--preset", "cpu-digits", "--steps", "4", "--batch-size", "8",
                 "--T", "40", "--warmup-steps", "2", "--lr", "1e-3", "--ema-decay", "0.9", "--flip",
                 "--out", str(run), "--no-progress"]) == 0
    assert tr.read_checkpoint(run / "last.pt")["step"] == 4


def test_book_config_and_toy_scatter_plot(tmp_path):
    run = tmp_path / "toy"
    assert main(["train", "--book-config", "toy-ring", "--steps", "2", "--out", str(run), "--no-progress"]) == 0
    assert tr.read_checkpoint(run / "last.pt")["config"]["dataset"] == "ring"
    png = tmp_path / "points.png"
    assert main(["sample", "--checkpoint", str(run / "last.pt"), "--n", "16", "--steps", "4", "--out", str(png),
                 "--no-progress"]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_sample_draws_a_large_n_in_batches(tmp_path, capsys, monkeypatch):
    run = tmp_path / "toy"
    assert main(["train", "--book-config", "toy-ring", "--steps", "2", "--out", str(run), "--no-progress"]) == 0
    shapes = []
    real = sampling.ddpm_sample
    monkeypatch.setattr(sampling, "ddpm_sample", lambda m, d, shape, **kw: shapes.append(shape) or real(m, d, shape, **kw))
    png = tmp_path / "points.png"
    assert main(["sample", "--checkpoint", str(run / "last.pt"), "--n", "7", "--batch-size", "3", "--steps", "4",
                 "--out", str(png), "--no-progress"]) == 0
    assert shapes == [(3, 2), (2, 2), (2, 2)] and "wrote 7 samples" in capsys.readouterr().out
    assert main(["sample", "--checkpoint", str(run / "last.pt"), "--n", "7", "--steps", "4", "--out", str(png),
                 "--no-progress"]) == 0
    assert shapes[3:] == [(7, 2)]  # one batch up to --batch-size (256 by default)
    with pytest.raises(ValueError, match=r"--batch-size must be >= 1, got 0"):
        main(["sample", "--checkpoint", str(run / "last.pt"), "--batch-size", "0", "--out", str(png)])


def test_bad_values_give_clear_errors(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["train", "--schedule", "quadratic", "--out", str(tmp_path)])
    assert "invalid choice: 'quadratic'" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"TrainConfig.T = 10 with schedule 'linear'"):
        main(["train", "--dataset", "digits", "--preset", "cpu-digits", "--T", "10", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        main(["sample", "--checkpoint", "x.pt", "--sampler", "euler", "--out", "x.png"])


def test_optional_fields_take_none_on_the_command_line(tmp_path, capsys):
    """The help says "0 or None: no clipping": `--grad-clip none` must mean None (it was refused as
    an invalid float), `--dropout none` the preset's own rate; a number still parses as before."""
    run = tmp_path / "noclip"
    assert main(["train", "--book-config", "digits", "--steps", "1", "--grad-clip", "none", "--dropout", "None",
                 "--out", str(run), "--no-progress"]) == 0
    config = tr.read_checkpoint(run / "last.pt")["config"]
    assert config["grad_clip"] is None and config["dropout"] is None
    args = build_parser().parse_args(["train", "--out", "x", "--grad-clip", "0.5", "--image-size", "16"])
    assert args.grad_clip == 0.5 and args.image_size == 16
    with pytest.raises(SystemExit):
        main(["train", "--grad-clip", "nothing", "--out", str(tmp_path / "y")])
    assert "invalid float value: 'nothing'" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a field that cannot be None takes no "none"
        main(["train", "--lr", "none", "--out", str(tmp_path / "z")])
