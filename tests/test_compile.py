"""The ``compile`` switch of every family's module (``--model.compile true``): compiled steps equal eager ones.

The fast tests compile through TorchDynamo with eager backends (AOTAutograd's for the training step): the same
graph capture, guards and forward/backward split as the default inductor backend, without generating and
building C++ kernels, which took about 17 minutes for the tiny model on a busy 2-core machine: far past
the test budget, so inductor itself is exercised by ``bench/train_throughput.py --compile`` on a GPU node.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from datamodules.schema import DEGRADATIONS, TASK_IDS
from lightning_modules.gifnet import GIFNetModule

TINY_CONFIG = Path(__file__).resolve().parent / "configs" / "gifnet-tiny.yaml"
SIZE = 32


def tiny_module(**overrides: Any) -> GIFNetModule:
    torch.manual_seed(0)
    return GIFNetModule(**{**yaml.safe_load(TINY_CONFIG.read_text())["model"], **overrides})


def mixed_batch() -> dict[str, Any]:
    """2 infrared-visible samples (no target) and 2 multi-focus samples (with one)."""
    generator = torch.Generator().manual_seed(1)
    images = {name: torch.rand(4, 1, SIZE, SIZE, generator=generator) for name in ("a", "b", "gt")}
    return {
        **images,
        "has_b": torch.ones(4, dtype=torch.bool),
        "has_gt": torch.tensor([False, False, True, True]),
        "task": torch.tensor([TASK_IDS["ivif"], TASK_IDS["ivif"], TASK_IDS["mfif"], TASK_IDS["mfif"]]),
        "degradation": torch.zeros(4, len(DEGRADATIONS)),
    }


def optimizer_step(module: GIFNetModule, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
    """One training step as Lightning runs it (losses through the compile switch, backward, AdamW); the losses.

    The gradients stay on the parameters.
    """
    optimizer = module.build_optimizer()
    losses = module.compiled("training_losses")(batch)
    losses["loss"].backward()
    optimizer.step()
    return {name: value.detach() for name, value in losses.items()}


def compile_backend(monkeypatch: pytest.MonkeyPatch, backend: str) -> None:
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend=backend))


def assert_same_step(eager: GIFNetModule, compiled: GIFNetModule) -> None:
    batch = mixed_batch()
    eager_losses, compiled_losses = optimizer_step(eager, batch), optimizer_step(compiled, batch)
    assert compiled._compiled, "the compile switch did not compile training_losses"
    assert eager_losses.keys() == compiled_losses.keys()
    for name, value in eager_losses.items():
        torch.testing.assert_close(compiled_losses[name], value, rtol=1e-4, atol=1e-6, msg=name)
    # gradients, not updated weights: AdamW's first update is about lr * sign(gradient), which float rounding
    # flips where a gradient is next to zero
    for (name, parameter), compiled_parameter in zip(eager.named_parameters(), compiled.parameters()):
        if parameter.grad is None:
            assert compiled_parameter.grad is None, name
            continue
        torch.testing.assert_close(compiled_parameter.grad, parameter.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_compiled_training_step_equals_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    compile_backend(monkeypatch, "aot_eager")  # graph capture and the forward/backward split
    eager, compiled = tiny_module(), tiny_module(compile=True)
    before = [parameter.detach().clone() for parameter in compiled.parameters()]
    assert_same_step(eager, compiled)
    # the step did train: the comparison is not between two untouched models
    assert any(not torch.equal(old, new) for old, new in zip(before, compiled.parameters()))


def test_compiled_fusing_equals_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    compile_backend(monkeypatch, "eager")  # inference: graph capture only
    eager, compiled = tiny_module().eval(), tiny_module(compile=True).eval()
    generator = torch.Generator().manual_seed(2)
    # an odd size: fuse_padded pads to the window multiple around the compiled fuse
    batch = {"a": torch.rand(1, 1, 37, 45, generator=generator), "task": torch.tensor([TASK_IDS["ivif"]])}
    batch |= {"b": torch.rand(1, 1, 37, 45, generator=generator), "has_b": torch.ones(1, dtype=torch.bool)}
    with torch.inference_mode():
        expected, fused = eager.fuse_full_resolution(batch), compiled.fuse_full_resolution(batch)
    assert "fuse" in compiled._compiled
    torch.testing.assert_close(fused, expected, rtol=1e-4, atol=1e-5)


def test_compile_is_a_run_setting_not_a_saved_hyperparameter() -> None:
    module = tiny_module(compile=True)
    assert module.compile_steps and "compile" not in module.hparams
    assert not tiny_module().compile_steps
    plain = tiny_module()
    assert plain.compiled("fuse") == plain.fuse  # off: the plain method


def test_compile_switch_on_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    from recipes import gifnet

    with pytest.raises(SystemExit):
        gifnet.main(["fit", "--config", str(TINY_CONFIG), "--model.compile", "true", "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    model = printed["model"].get("init_args", printed["model"])
    assert model["compile"] is True
