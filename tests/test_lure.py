"""LURE: network, pseudo-degradations, stage losses, prompts in fusing, and the recipe end to end."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _draw_probe import read_draws

from datamodules.schema import DEGRADATIONS, TASK_IDS, SampleMeta
from datamodules.shards.writer import ShardSetWriter, encode_sample
from datamodules.synthesis import SYNTHETIC_KINDS, degrade_batch, random_degradations
from lightning_modules.lure import LUREModule
from lightning_modules.networks.lure import LURENet
from lightning_modules.text import PromptEmbeddings, TextEncoderConfig

from data_helpers import save_png
from ddp_fit import ddp_fit
from test_text import one_thread  # noqa: F401  (autouse: the tiny models here run faster on one thread)
from text_guided_helpers import (
    PROJECT_ROOT,
    TINY_TEXT,
    mixed_sources,
    run_recipe_process,
    tiny_clip_text_args,
)


def tiny_module(**overrides: object) -> LUREModule:
    text = TextEncoderConfig(
        model_name="tiny-text", random_init=True, model_config={"embed_dim": 16, "text_cfg": TINY_TEXT}
    )
    return LUREModule(**{"channels": 8, "text_encoder": text, "warmup_steps": 1, **overrides})


def smooth_images(count: int, size: int, seed: int) -> torch.Tensor:
    """Random images with structure at several scales (noise smoothed by upsampling)."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 1, size // 8, size // 8, generator=generator)
    fine = torch.rand(count, 1, size // 2, size // 2, generator=generator)
    image = 0.7 * F.interpolate(coarse, size=size, mode="bilinear") + 0.3 * F.interpolate(
        fine, size=size, mode="bilinear"
    )
    return image.clamp(0, 1)


def restoration_batch(count: int = 4, size: int = 32) -> dict:
    """Dark versions of clean images (a gain of 0.4), tagged lowlight:2."""
    clean = smooth_images(count, size, seed=0)
    dark = 0.4 * clean
    degradation = torch.zeros(count, len(DEGRADATIONS))
    degradation[:, DEGRADATIONS.index("lowlight")] = 2.0
    return {
        "a": dark,
        "b": torch.zeros_like(dark),
        "gt": clean,
        "has_b": torch.zeros(count, dtype=torch.bool),
        "has_gt": torch.ones(count, dtype=torch.bool),
        "task": torch.full((count,), TASK_IDS["restore"]),
        "degradation": degradation,
        "prompt": [""] * count,
        "key": [f"r{i}" for i in range(count)],
    }


def mixed_batch(size: int = 32) -> dict:
    """Two restoration pairs, an infrared-visible pair without target, a multi-focus pair with one."""
    batch = restoration_batch(2, size)
    sources = smooth_images(4, size, seed=5)
    batch["a"] = torch.cat([batch["a"], sources[:2]])
    batch["b"] = torch.cat([batch["b"], sources[2:]])
    batch["gt"] = torch.cat([batch["gt"], torch.zeros_like(sources[:1]), sources[2:3]])
    batch["has_b"] = torch.tensor([False, False, True, True])
    batch["has_gt"] = torch.tensor([True, True, False, True])
    batch["task"] = torch.tensor([TASK_IDS["restore"]] * 2 + [TASK_IDS["ivif"], TASK_IDS["mfif"]])
    batch["degradation"] = torch.cat([batch["degradation"], torch.zeros(2, len(DEGRADATIONS))])
    batch["prompt"] = ["", "brighten the image", "", ""]
    batch["key"] = ["r0", "r1", "ir", "mf"]
    return batch


# ------------------------------------------------------------------------------------- network
def test_an_untrained_network_is_the_identity_and_keeps_the_size() -> None:
    net = LURENet(channels=8, token_dim=32, pooled_dim=16)
    text = PromptEmbeddings(
        torch.randn(2, 16), torch.randn(2, 5, 32), torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    )
    image = torch.rand(2, 1, 24, 40)
    assert torch.equal(net(image, image, torch.tensor([False, False]), text), image)
    assert net.encode(image, text).shape == (2, 8, 12, 20)
    fused = net(image, image.flip(-1), torch.tensor([True, False]), text)
    assert fused.shape == image.shape
    assert torch.equal(fused[1], image[1])  # a restoration sample never passes the fusion rules


def test_text_guided_attention_reads_the_tokens_not_only_the_pooled_vector() -> None:
    torch.manual_seed(0)
    block = LURENet(channels=8, token_dim=32, pooled_dim=16).encoder.guide_eighth
    features = torch.randn(1, 16, 4, 4)
    pooled, tokens = torch.randn(1, 16), torch.randn(1, 4, 32)
    other_tokens = tokens.clone()
    other_tokens[0, 2] = torch.randn(32)  # one word differs, the sentence vector does not
    mask = torch.ones(1, 4, dtype=torch.bool)
    assert not torch.allclose(
        block(features, PromptEmbeddings(pooled, tokens, mask)),
        block(features, PromptEmbeddings(pooled, other_tokens, mask)),
    )
    mask[0, 2] = False  # a padding token has no say
    torch.testing.assert_close(
        block(features, PromptEmbeddings(pooled, tokens, mask)),
        block(features, PromptEmbeddings(pooled, other_tokens, mask)),
    )


# ----------------------------------------------------------------------------- pseudo-degradation
@pytest.mark.parametrize("kind", SYNTHETIC_KINDS)
def test_pseudo_degradations_grow_with_severity(kind: str) -> None:
    torch.manual_seed(0)
    clean = smooth_images(2, 32, seed=2) * 0.8 + 0.1
    errors = [float((degrade_batch(clean, kind, severity) - clean).abs().mean()) for severity in (1, 2, 3)]
    assert 0 < errors[0] < errors[1] < errors[2]
    assert all(
        0 <= float(degrade_batch(clean, kind, s).min()) and float(degrade_batch(clean, kind, s).max()) <= 1
        for s in (1, 3)
    )


def test_random_degradations_report_what_they_did() -> None:
    clean = smooth_images(6, 32, seed=3)
    degraded, severities = random_degradations(clean)
    assert degraded.shape == clean.shape and severities.shape == (6, len(DEGRADATIONS))
    assert torch.all((severities > 0).sum(dim=1) == 1)
    with pytest.raises(ValueError, match="cannot synthesise"):
        degrade_batch(clean, "rain", 1)


# ------------------------------------------------------------------------------------- training
def test_the_unified_loss_decreases_on_a_tiny_run() -> None:
    torch.manual_seed(0)
    module = tiny_module(pseudo_fraction=0.0, stage=1)
    optimizer = torch.optim.Adam(module.net.parameters(), lr=1e-3)
    batch = restoration_batch()
    unified = []
    for _ in range(40):
        losses = module.training_losses(batch)
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
        unified.append(float(losses["unified"].detach()))
    assert np.mean(unified[-5:]) < 0.5 * np.mean(unified[:5])


def test_stage_one_trains_restoration_stage_two_adds_fusion_rules() -> None:
    torch.manual_seed(0)
    batch = mixed_batch()
    stage_one = tiny_module(stage=1).training_losses(batch)
    assert "fusion" not in stage_one and float(stage_one["stage"]) == 1
    assert stage_one["unified"].item() > 0 and stage_one["pseudo_unified"].item() > 0
    module = tiny_module(stage=2)
    stage_two = module.training_losses(batch)
    assert float(stage_two["stage"]) == 2 and stage_two["fusion"].item() > 0
    stage_two["loss"].backward()
    assert module.net.rules.select.weight.grad.abs().sum() > 0
    assert any(parameter.grad.abs().sum() > 0 for parameter in module.net.decoder.parameters())  # D trains on
    # stage 2 freezes the unified space: the encoder's gradient is the zero of the DDP anchor only
    assert all(float(parameter.grad.abs().sum()) == 0 for parameter in module.net.encoder.parameters())


def test_stage_two_freezes_the_unified_space_under_adamw() -> None:
    """The encoder moves in stage 1, then stays exactly as it is while decoder and fusion rules train on."""
    torch.manual_seed(0)
    module = tiny_module(stage1_steps=3, weight_decay=0.1)
    trainer = SimpleNamespace(estimated_stepping_batches=100, global_step=0)
    module.trainer = trainer  # what configure_optimizers and the stage switch read
    configured = module.configure_optimizers()
    optimizer, scheduler = configured["optimizer"], configured["lr_scheduler"]["scheduler"]
    batch = mixed_batch()

    def snapshot(part: str) -> list[torch.Tensor]:
        return [parameter.detach().clone() for parameter in getattr(module.net, part).parameters()]

    def changed(before: list[torch.Tensor], part: str) -> bool:
        return any(not torch.equal(old, new) for old, new in zip(before, getattr(module.net, part).parameters()))

    def train(steps: int) -> None:
        for _ in range(steps):
            losses = module.training_losses(batch)
            optimizer.zero_grad()
            losses["loss"].backward()
            optimizer.step()
            scheduler.step()
            trainer.global_step += 1

    encoder = snapshot("encoder")
    train(3)
    assert changed(encoder, "encoder"), "stage 1 trains the encoder"
    assert module.current_stage == 2 and [group["lr"] for group in optimizer.param_groups][1] == 0.0
    encoder, decoder, rules = snapshot("encoder"), snapshot("decoder"), snapshot("rules")
    train(2)  # AdamW's momentum from stage 1 and its weight decay would move a merely gradient-free encoder
    assert not changed(encoder, "encoder"), "stage 2 left the unified space as stage 1 defined it"
    assert changed(decoder, "decoder") and changed(rules, "rules")


def test_every_parameter_gets_a_gradient_in_stage_one() -> None:
    """DDP reduces the gradient of every parameter, including the fusion rules stage 1 leaves alone."""
    module = tiny_module(stage=1)
    module.training_losses(mixed_batch())["loss"].backward()
    assert all(parameter.grad is not None for parameter in module.net.parameters())
    assert float(module.net.rules.select.weight.grad.abs().sum()) == 0


def test_the_stage_follows_the_step_unless_fixed() -> None:
    module = tiny_module(stage1_steps=10)
    assert module.current_stage == 1
    assert tiny_module(stage=2).current_stage == 2
    with pytest.raises(ValueError, match="stage must be"):
        tiny_module(stage=3)


# ---------------------------------------------------------------------------------------- prompts
def test_evaluation_prompts_prefer_the_sample_and_predict_prompt_overrides() -> None:
    module = tiny_module()
    batch = mixed_batch()
    prompts = module.sample_prompts(batch, training=False)
    assert prompts == [
        "image restoration; the image is dark",
        "brighten the image",
        "infrared and visible image fusion",
        "multi-focus image fusion",
    ]
    assert (
        tiny_module(sample_prompt_rate=0.0).sample_prompts(batch, training=False)[1]
        == "image restoration; the image is dark"
    )

    seen: list[list[str]] = []
    encode = module.text_encoder.encode
    module.text_encoder.encode = lambda prompts, device="cpu": seen.append(list(prompts)) or encode(prompts, device)
    pair = {
        **batch,
        "a_color": batch["a"].expand(-1, 3, -1, -1),
        "a_channels": torch.ones(4, dtype=torch.int64),
        "b_channels": torch.ones(4, dtype=torch.int64),
        "bit_depth": torch.full((4,), 8),
    }
    module.predict_step(pair, 0)
    assert seen[-1] == prompts
    module.predict_prompt = "the image is very dark"
    module.predict_step(pair, 0)
    assert seen[-1] == ["the image is very dark"] * 4


# ------------------------------------------------------------------------------ recipe end to end
def write_tiny_training_set(root: Path) -> dict[str, Path]:
    """Restoration and fusion shards, and a folder of full-resolution pairs, all made of structured noise."""
    rng = np.random.default_rng(0)

    def picture(size: tuple[int, int]) -> np.ndarray:
        image = torch.from_numpy(rng.random((1, 1, size[0] // 4, size[1] // 4), dtype=np.float32))
        image = F.interpolate(image, size=size, mode="bilinear")[0, 0].numpy()
        return (np.clip(image + 0.1 * rng.random(size), 0, 1) * 255).astype(np.uint8)

    folders = {"restore": root / "restore", "ivif": root / "ivif"}
    with ShardSetWriter(folders["restore"], "restore", maxcount=8) as writer:
        for number in range(8):
            clean = picture((40, 40))
            noisy = np.clip(clean + rng.normal(0, 20, clean.shape), 0, 255).astype(np.uint8)
            meta = SampleMeta(task="restore", degradations=["noise:2"], source="test/restore")
            writer.write(encode_sample(f"r{number}", {"a": noisy, "gt": clean}, meta))
    with ShardSetWriter(folders["ivif"], "ivif", maxcount=8) as writer:
        for number in range(8):
            meta = SampleMeta(task="ivif", source="test/ivif", prompt="fuse the infrared and visible images")
            writer.write(encode_sample(f"i{number}", {"a": picture((40, 40)), "b": picture((40, 40))}, meta))
    pairs = root / "pairs"
    clean = picture((30, 44))  # not a multiple of the network's 8: predict pads
    save_png(
        pairs / "RESTORE" / "p0" / "a.png", np.clip(clean + rng.normal(0, 20, clean.shape), 0, 255).astype(np.uint8)
    )
    save_png(pairs / "RESTORE" / "p0" / "gt.png", clean)
    (pairs / "RESTORE" / "p0" / "meta.json").write_text(json.dumps({"task": "restore", "degradations": ["noise:2"]}))
    save_png(pairs / "IVIF" / "p1" / "a.png", picture((36, 36)))
    save_png(pairs / "IVIF" / "p1" / "b.png", picture((36, 36)))
    return {**folders, "pairs": pairs}


@pytest.mark.slow
def test_both_stages_run_resume_and_the_checkpoint_predicts_without_clip_weights(tmp_path: Path) -> None:
    data = write_tiny_training_set(tmp_path / "data")
    # A tiny CLIP saved to a file: training loads the text tower from it; predict will not have it.
    text_args, weights = tiny_clip_text_args(tmp_path)
    sources = mixed_sources(data)
    fit_args = [
        "fit",
        "--config",
        str(PROJECT_ROOT / "tests/configs/lure-tiny.yaml"),
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
        "pytorch_lightning.loggers.CSVLogger",
        "--trainer.logger.save_dir",
        str(tmp_path / "logs"),
    ]
    fit = run_recipe_process("lure", *fit_args, cwd=tmp_path)
    assert fit.returncode == 0, fit.stderr[-3000:]
    rows = list(csv.DictReader(next((tmp_path / "logs").rglob("metrics.csv")).open()))
    stages = {float(row["train/stage"]) for row in rows if row.get("train/stage")}
    assert stages == {1.0, 2.0}
    assert any(row.get("train/fusion") for row in rows)
    assert any(row[key] for row in rows for key in row if key.startswith("val/"))  # validation on the pairs ran

    checkpoint = tmp_path / "runs" / "tiny" / "checkpoints" / "last.ckpt"
    resumed = run_recipe_process("lure", *fit_args, "--ckpt_path", "last", "--trainer.max_steps", "8", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert torch.load(checkpoint, weights_only=True)["global_step"] == 8

    weights.unlink()  # from here on no CLIP weights exist
    config = next(tmp_path.rglob("config.yaml"))  # the run's full configuration, saved by the CLI
    predict = run_recipe_process(
        "lure",
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
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.png")) == [
        "IVIF/p1.png",
        "RESTORE/p0.png",
    ]

    # --model.predict_prompt reaches the model (LightningCLI must not replace it with the checkpoint's
    # hyperparameters): a prompt never encoded needs the deleted weights, and the error says so.
    unseen = run_recipe_process(
        "lure",
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
        str(tmp_path / "out2"),
        "--model.predict_prompt",
        "a prompt that was never encoded",
        cwd=tmp_path,
    )
    assert unseen.returncode != 0
    assert "not in the prompt cache" in unseen.stderr and "does not exist" in unseen.stderr

    # Changing the prompt changes the output (two prompts the checkpoint has cached).
    model = LUREModule.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    image = smooth_images(1, 32, seed=9)
    restore = torch.tensor([TASK_IDS["restore"]])
    with torch.no_grad():
        with model.prompted(["image restoration; the image is very noisy"]):
            noisy_prompt = model.fuse(image, image, restore)
        with model.prompted(["image restoration; there is dense haze"]):
            haze_prompt = model.fuse(image, image, restore)
    assert (noisy_prompt - haze_prompt).abs().max() > 1e-4


LURE_TINY = str(PROJECT_ROOT / "tests" / "configs" / "lure-tiny.yaml")


def test_training_draws_differ_across_two_ddp_ranks_and_repeat_across_a_resume(tmp_path: Path) -> None:
    # Prompt paraphrases and pseudo-degradations: with torch's global generator seeded alike on every
    # rank, both ranks drew the same; a resumed run must seed each step as the uninterrupted one did.
    def fit(folder: Path, steps: int, *extra: str) -> dict[int, dict[int, dict]]:
        args = ["--config", LURE_TINY, "--run_name", "draws", "--trainer.logger=false", "--trainer.limit_val_batches=0",
                f"--trainer.max_steps={steps}", "--data.batches_per_epoch=2", *extra,
                "--trainer.callbacks+=tests._draw_probe.DrawProbe",
                f"--trainer.callbacks.output_dir={folder / 'draws'}"]  # fmt: skip
        ddp_fit("lure", args, folder)
        return read_draws(folder / "draws")

    whole = fit(tmp_path / "whole", 4)
    assert sorted(whole[0]) == sorted(whole[1]) == [1, 2, 3, 4]
    for step in whole[0]:
        first, second = whole[0][step], whole[1][step]
        assert first["seed"] != second["seed"], f"step {step}: both ranks drew from one seed"
        assert first["prompt_state"] != second["prompt_state"] and first["pseudo_state"] != second["pseudo_state"]

    resumed_dir = tmp_path / "resumed"
    fit(resumed_dir, 2)
    for records in ("draws", "probe"):  # the resumed fit's records alone
        shutil.rmtree(resumed_dir / records)
    resumed = fit(resumed_dir, 4, "--ckpt_path", "last")
    for rank in (0, 1):
        seeds = {step: record["seed"] for step, record in resumed[rank].items()}
        assert seeds == {step: whole[rank][step]["seed"] for step in (3, 4)}, f"rank {rank} reseeded differently"


def test_random_degradations_run_under_bf16_autocast() -> None:
    """bf16-mixed training degrades float32 batches inside autocast; kernels that return bf16 must not break it."""
    clean = torch.rand(16, 1, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        degraded, severities = random_degradations(clean)
    assert degraded.dtype == clean.dtype and degraded.shape == clean.shape
    assert bool((severities.sum(dim=1) > 0).all())
