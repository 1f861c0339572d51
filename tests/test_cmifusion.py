"""CMI-Fusion: network, prompts, per-task losses, gradients, published size, DDP, and the recipe end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from test_lure import mixed_batch, smooth_images, write_tiny_training_set

from datamodules.schema import TASK_IDS, TASKS
from lightning_modules.cmifusion import CMIFusionModule
from lightning_modules.networks.cmifusion import CMIFusionNet
from lightning_modules.prompts import PromptTable
from lightning_modules.text import PromptEmbeddings, TextEncoderConfig

from ddp_fit import assert_ranks_agree, ddp_fit
from test_text import _write_table, one_thread  # noqa: F401  (autouse: the tiny models here run faster on one thread)
from text_guided_helpers import PROJECT_ROOT, mixed_sources, run_recipe_process, tiny_clip_text_args

TINY_CONFIG = PROJECT_ROOT / "tests" / "configs" / "cmifusion-tiny.yaml"
PUBLISHED_CONFIG = PROJECT_ROOT / "recipes" / "configs" / "cmifusion.yaml"


def tiny_module(**overrides: object) -> CMIFusionModule:
    model = yaml.safe_load(TINY_CONFIG.read_text())["model"]
    text = TextEncoderConfig(**model.pop("text_encoder"))
    return CMIFusionModule(**{**model, "text_encoder": text, **overrides})


def tiny_net() -> CMIFusionNet:
    net = CMIFusionNet(8, 16, 32, 2, 2.0, 1, 1, (8,))
    # the decoder's last convolution starts at zero (output = source mean); give it weights so the
    # interaction's effect on the output can be seen
    torch.nn.init.normal_(net.decoder.layers[-1].weight, std=0.1)
    return net


def random_text(batch: int, length: int, seed: int, pooled: torch.Tensor | None = None) -> PromptEmbeddings:
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randn(batch, length, 32, generator=generator)
    pooled = torch.randn(batch, 16, generator=generator) if pooled is None else pooled
    return PromptEmbeddings(pooled, tokens, torch.ones(batch, length, dtype=torch.bool))


# ------------------------------------------------------------------------------------- network
def test_an_untrained_network_returns_the_source_mean_at_any_size() -> None:
    net = CMIFusionNet(8, 16, 32, 2, 2.0, 1, 1, (8,))
    a, b = smooth_images(2, 36, seed=1)[:, :, :, :30], smooth_images(2, 36, seed=2)[:, :, :, :30]
    texts = [random_text(2, length, seed) for seed, length in enumerate((4, 6, 5))]
    fused = net(a, b, *texts)
    assert fused.shape == (2, 1, 36, 30)
    torch.testing.assert_close(fused, 0.5 * (a + b))


@pytest.mark.parametrize("which", [0, 1, 2], ids=["source-a prompt", "source-b prompt", "fusion prompt"])
def test_each_prompt_acts_through_its_tokens_not_the_pooled_vector(which: int) -> None:
    torch.manual_seed(0)
    net = tiny_net().eval()
    a, b = smooth_images(2, 24, seed=3), smooth_images(2, 24, seed=4)
    texts = [random_text(2, 5, seed) for seed in range(3)]
    with torch.no_grad():
        reference = net(a, b, *texts)
        other_tokens = list(texts)
        other_tokens[which] = random_text(2, 5, seed=10, pooled=texts[which].pooled)  # same pooled, new tokens
        changed = net(a, b, *other_tokens)
        other_pooled = list(texts)
        other_pooled[which] = PromptEmbeddings(torch.randn(2, 16), texts[which].tokens, texts[which].token_mask)
        unchanged = net(a, b, *other_pooled)
    assert (changed - reference).abs().max() > 1e-4
    torch.testing.assert_close(unchanged, reference)


def test_fusing_in_strips_equals_fusing_whole() -> None:
    torch.manual_seed(0)
    net = tiny_net().eval()
    a, b = smooth_images(2, 40, seed=12)[:, :, :, :20], smooth_images(2, 40, seed=13)[:, :, :, :20]
    texts = [random_text(2, length, seed) for seed, length in enumerate((3, 5, 4))]
    with torch.no_grad():
        torch.testing.assert_close(net(a, b, *texts, chunk_pixels=2 * 20 * 5), net(a, b, *texts))


def test_padded_prompt_tokens_are_ignored() -> None:
    torch.manual_seed(0)
    net = tiny_net().eval()
    a, b = smooth_images(1, 16, seed=5), smooth_images(1, 16, seed=6)
    texts = [random_text(1, 4, seed) for seed in range(3)]
    padded = PromptEmbeddings(
        texts[2].pooled,
        torch.cat([texts[2].tokens, torch.randn(1, 3, 32)], dim=1),
        torch.tensor([[True] * 4 + [False] * 3]),
    )
    with torch.no_grad():
        torch.testing.assert_close(net(a, b, texts[0], texts[1], padded), net(a, b, *texts))


# ------------------------------------------------------------------------------------- prompts
def test_every_task_has_three_distinct_prompts_in_the_shipped_table() -> None:
    table = PromptTable.from_yaml()
    for task in TASKS:
        prompts = table.modality_prompts(task)
        assert len(prompts) == 3 and len(set(prompts)) == 3, (task, prompts)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r: r["modalities"].pop("nir"), "must map every task"),
        (lambda r: r["modalities"]["med"].pop("fused"), r"modalities\.med must have exactly the prompts a, b, fused"),
        (lambda r: r["modalities"]["ivif"].update(a=" "), r"modalities\.ivif: every prompt must be a non-empty string"),
        (lambda r: r.update(extra={}), "optionally 'modalities'"),
    ],
)
def test_a_broken_modalities_section_is_named(tmp_path: Path, mutate, message: str) -> None:
    path = _write_table(tmp_path / "prompts.yaml", mutate)
    with pytest.raises(ValueError, match=message) as error:
        PromptTable.from_yaml(path)
    assert str(path) in str(error.value)


def test_a_table_without_modalities_says_what_to_add(tmp_path: Path) -> None:
    table = PromptTable.from_yaml(_write_table(tmp_path / "prompts.yaml", lambda r: r.pop("modalities")))
    with pytest.raises(ValueError, match="has no 'modalities' section"):
        table.modality_prompts("ivif")


def test_the_task_prompts_steer_the_fused_image() -> None:
    torch.manual_seed(0)
    module = tiny_module().eval()
    torch.nn.init.normal_(module.net.decoder.layers[-1].weight, std=0.1)
    a, b = smooth_images(1, 24, seed=7), smooth_images(1, 24, seed=8)
    with torch.no_grad():
        ivif = module.fuse(a, b, torch.tensor([TASK_IDS["ivif"]]))
        med = module.fuse(a, b, torch.tensor([TASK_IDS["med"]]))
    # the network is the same for every task: only the prompts differ
    assert (ivif - med).abs().max() > 1e-4


# ------------------------------------------------------------------------------ losses, gradients
def test_each_sample_takes_the_losses_of_what_it_has() -> None:
    module = tiny_module()
    batch = mixed_batch()  # restore x2 (targets), ivif (no target), mfif (target)
    losses = module.training_losses(batch)
    assert {"restore/fidelity_l1", "mfif/fidelity_ssim", "ivif/intensity", "ivif/gradient", "ivif/ssim"} <= set(losses)
    assert not any(key.startswith("ivif/fidelity") or key.startswith("mfif/intensity") for key in losses)
    assert torch.isfinite(losses["loss"]) and losses["loss"] > 0


def test_a_fused_image_equal_to_its_target_has_no_fidelity_loss() -> None:
    module = tiny_module()
    target = smooth_images(2, 32, seed=11)
    task, has_gt = torch.tensor([TASK_IDS["mfif"]] * 2), torch.ones(2, dtype=torch.bool)
    host = {"task": task.tolist(), "has_gt": has_gt.tolist()}
    terms = module.loss_terms(target, target * 0.5, target, target, task, has_gt, host)
    assert float(terms["loss"]) < 1e-5


def test_every_parameter_gets_a_gradient() -> None:
    torch.manual_seed(0)
    module = tiny_module()
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-2)
    batch = mixed_batch()
    # the decoder's last convolution starts at zero, so upstream gradients appear from the second step
    for _ in range(2):
        optimizer.zero_grad()
        module.training_losses(batch)["loss"].backward()
        optimizer.step()
    missing = [name for name, p in module.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"no gradient reached {missing}"


def test_the_published_size(capsys: pytest.CaptureFixture[str]) -> None:
    model = yaml.safe_load(PUBLISHED_CONFIG.read_text())["model"]
    # the architecture only (the text tower's weights are not loaded to build the module)
    module = CMIFusionModule(**{**model, "text_encoder": TextEncoderConfig(**model["text_encoder"])})
    count = sum(p.numel() for p in module.parameters())
    with capsys.disabled():
        print(f"\nCMI-Fusion published-size config: {count:,} trainable parameters (no published count to check)")
    # the text tower is frozen and kept out of the module, so this is the fusion network alone
    assert count == sum(p.numel() for p in module.net.parameters()) == 17_785_079


# ------------------------------------------------------------------------------------- recipe
def test_fit_resume_and_predict_without_clip_weights(tmp_path: Path) -> None:
    data = write_tiny_training_set(tmp_path / "data")
    text_args, weights = tiny_clip_text_args(tmp_path)
    sources = mixed_sources(data)
    fit_args = [
        "fit",
        "--config",
        str(TINY_CONFIG),
        *text_args,
        "--data.sources",
        sources,
        "--data.val_pairs",
        json.dumps([str(data["pairs"])]),
        "--runs_dir",
        str(tmp_path / "runs"),
        "--run_name",
        "tiny",
        "--trainer.logger",
        "false",
    ]
    fit = run_recipe_process("cmifusion", *fit_args, cwd=tmp_path)
    assert fit.returncode == 0, fit.stderr[-3000:]
    checkpoint = tmp_path / "runs" / "tiny" / "checkpoints" / "last.ckpt"
    resumed = run_recipe_process(
        "cmifusion", *fit_args, "--ckpt_path", "last", "--trainer.max_steps", "6", cwd=tmp_path
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    saved = torch.load(checkpoint, weights_only=True)
    assert saved["global_step"] == 6
    table = PromptTable.from_yaml()
    assert {p for task in TASKS for p in table.modality_prompts(task)} <= set(saved["prompt_cache"]["prompts"])

    weights.unlink()  # from here on no CLIP weights exist
    config = next(tmp_path.rglob("config.yaml"))  # the run's full configuration, saved by the CLI
    predict = run_recipe_process(
        "cmifusion",
        "predict",
        "--config",
        str(config),
        "--ckpt_path",
        str(checkpoint),
        "--trainer.logger",
        "false",
        "--data.predict_pairs",
        json.dumps([str(data["pairs"])]),
        "--output_dir",
        str(tmp_path / "out"),
        cwd=tmp_path,
    )
    assert predict.returncode == 0, predict.stderr[-3000:]
    written = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.png"))
    assert written == ["IVIF/p1.png", "RESTORE/p0.png"]


def test_a_fit_without_text_weights_stops_at_once_and_says_how(tmp_path: Path) -> None:
    fit = run_recipe_process(
        "cmifusion",
        "fit",
        "--config",
        str(TINY_CONFIG),
        "--model.text_encoder.random_init",
        "false",
        "--model.text_encoder.weights_file",
        str(tmp_path / "missing.pt"),
        "--runs_dir",
        str(tmp_path / "runs"),
        cwd=tmp_path,
    )
    assert fit.returncode != 0
    assert "does not exist" in fit.stderr and "random_init" in fit.stderr


def test_two_process_ddp_fit_on_a_task_mix(tmp_path: Path) -> None:
    data = write_tiny_training_set(tmp_path / "data")
    sources = mixed_sources(data)
    ranks = ddp_fit("cmifusion", [
        "--config", str(TINY_CONFIG), "--data.sources", sources, "--data.val_pairs", json.dumps([str(data["pairs"])]),
        "--trainer.max_steps=4", "--trainer.logger=false", "--run_name", "ddp",
    ], tmp_path)  # fmt: skip
    assert_ranks_agree(ranks, steps=4)
