"""UP-Fusion: network, differentiable channel selection, prompts, visual tower weights, recipe end to end, DDP."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import open_clip
import pytest
import torch
from test_lure import mixed_batch, write_tiny_training_set

from datamodules.schema import DEGRADATIONS
from lightning_modules.image_features import ImageFeatureEncoder
from lightning_modules.networks.upfusion import UPFusionNet, score_weighted_selection
from lightning_modules.text import CLIPTowerConfig, TextWeightsUnavailable
from lightning_modules.upfusion import UPFusionModule

from ddp_fit import assert_ranks_agree, ddp_fit
from test_text import one_thread  # noqa: F401  (autouse: the tiny models here run faster on one thread)
from text_guided_helpers import TINY_TEXT, mixed_sources, run_recipe_process

PROJECT_ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = PROJECT_ROOT / "tests" / "configs" / "upfusion-tiny.yaml"
TINY_VISION = {"image_size": 32, "layers": 1, "width": 32, "head_width": 32, "patch_size": 16}
TINY_NET = {"width": 8, "blocks": (1, 1, 1, 1), "heads": (1, 1, 2, 2), "expansion": 2.0, "refinement_blocks": 1}

PUBLISHED_SIZE_PARAMETERS = 48_966_958
"""Trainable parameters of ``upfusion.yaml`` with ViT-B-32's 512-wide text and image embeddings: our
count (the paper gives none that we could find); pinned, so an accidental change of the network shows."""


def tiny_module(**overrides: object) -> UPFusionModule:
    text = CLIPTowerConfig(
        model_name="tiny-text", random_init=True, model_config={"embed_dim": 16, "text_cfg": TINY_TEXT}
    )
    vision = CLIPTowerConfig(
        model_name="tiny-vision", random_init=True, model_config={"embed_dim": 16, "vision_cfg": TINY_VISION}
    )
    return UPFusionModule(**{**TINY_NET, "text_encoder": text, "image_encoder": vision, **overrides})


def randomise_output(module: UPFusionModule) -> None:
    """The output convolution starts at zero (the network starts as the pixel average), which hides
    everything upstream from the output and from gradients; give it weights as training would."""
    torch.nn.init.normal_(module.net.output.weight, std=0.2)


# ------------------------------------------------------------------------------------- network
def test_an_untrained_network_is_the_pixel_average_and_keeps_the_size() -> None:
    torch.manual_seed(0)
    net = UPFusionNet(text_dim=16, image_feature_dim=8, **TINY_NET)
    a, b = torch.rand(2, 1, 24, 40), torch.rand(2, 1, 24, 40)
    fused = net(a, b, torch.randn(2, 16), torch.randn(2, 16))
    assert fused.shape == a.shape
    torch.testing.assert_close(fused, 0.5 * (a + b))


def test_the_published_size(capsys: pytest.CaptureFixture[str]) -> None:
    with torch.device("meta"):  # shapes only: no memory, no time
        net = UPFusionNet(text_dim=512, image_feature_dim=512)
    count = sum(parameter.numel() for parameter in net.parameters())
    with capsys.disabled():
        print(f"\nUP-Fusion published size (width 48, blocks 4/6/6/8, heads 1/2/4/8): {count:,} parameters")
    assert count == PUBLISHED_SIZE_PARAMETERS


def test_selection_keeps_the_best_channels_in_score_order_and_passes_gradients() -> None:
    features = torch.arange(4.0)[None, :, None, None].expand(1, 4, 2, 2).clone()
    scores = torch.tensor([[0.0, 3.0, -1.0, 1.0]], requires_grad=True)
    selected = score_weighted_selection(features, scores, keep=2)
    gates = 2 * torch.sigmoid(torch.tensor([3.0, 1.0]))
    torch.testing.assert_close(selected[0, :, 0, 0], torch.tensor([1.0, 3.0]) * gates)
    selected.sum().backward()
    assert scores.grad[0, 1] > 0 and scores.grad[0, 3] > 0
    assert scores.grad[0, 0] == 0 and scores.grad[0, 2] == 0  # not selected: no say in this step


# ------------------------------------------------------------------------------ module: prompts
def test_gradients_reach_every_scorer_and_the_text_projections() -> None:
    torch.manual_seed(0)
    module = tiny_module()
    randomise_output(module)
    module.training_losses(mixed_batch())["loss"].backward()
    net = module.net
    scorers = {
        "SCPM squeeze-and-excitation": net.prune.excitation[0].weight,
        "SCPM image-feature projection": net.prune.semantic.weight,
        **{
            f"TCPM level {level} text projection": perturb.text_scores[0].weight
            for level, perturb in enumerate(net.perturb)
        },
    }
    for name, weight in scorers.items():
        assert weight.grad is not None and float(weight.grad.abs().sum()) > 0, f"{name} got no gradient"
    assert all(parameter.grad is not None for parameter in module.parameters()), (
        "plain DDP needs every parameter in the graph"
    )


def test_the_prompt_follows_task_and_degradation_and_changes_the_output() -> None:
    torch.manual_seed(0)
    module = tiny_module()
    randomise_output(module)
    batch = mixed_batch()
    prompts = module.sample_prompts(batch, training=False)
    assert prompts == [
        "image restoration; the image is dark",
        "image restoration; the image is dark",
        "infrared and visible image fusion",
        "multi-focus image fusion",
    ]
    a, b = batch["a"][2:3], batch["b"][2:3]
    with torch.no_grad():
        plain = module.fuse_prompted(a, b, ["infrared and visible image fusion"])
        dark = module.fuse_prompted(a, b, ["infrared and visible image fusion; the visible image is very dark"])
        again = module.fuse_prompted(a, b, ["infrared and visible image fusion"])
    torch.testing.assert_close(plain, again)
    assert float((plain - dark).abs().max()) > 1e-4


def test_training_uses_each_samples_degradation_and_predict_prompt_overrides() -> None:
    module = tiny_module()
    batch = mixed_batch()
    batch["degradation"][2, DEGRADATIONS.index("haze")] = 3.0
    seen: list[list[str]] = []
    encode = module.text_encoder.encode
    module.text_encoder.encode = lambda prompts, device="cpu": seen.append(list(prompts)) or encode(prompts, device)
    module.training_losses(batch)
    assert "fog" in seen[-1][2] or "haze" in seen[-1][2]
    pair = {
        **batch,
        "a_color": batch["a"].expand(-1, 3, -1, -1),
        "a_channels": torch.ones(4, dtype=torch.int64),
        "b_channels": torch.ones(4, dtype=torch.int64),
        "bit_depth": torch.full((4,), 8),
    }
    module.predict_prompt = "the image is very dark"
    module.predict_step(pair, 0)
    assert seen[-1] == ["the image is very dark"] * 4


def test_supervised_and_unsupervised_samples_take_their_own_terms() -> None:
    losses = tiny_module().training_losses(mixed_batch())
    assert {"ivif/intensity", "ivif/gradient", "ivif/ssim"} <= set(losses)
    assert {"mfif/fidelity_l1", "restore/fidelity_ssim"} <= set(losses) and "mfif/intensity" not in losses
    assert losses["loss"].ndim == 0 and losses["loss"].item() > 0


# ------------------------------------------------------------------------------- the visual tower
@pytest.fixture()
def tiny_clip_weights(tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    (tmp_path / "tiny-clip.json").write_text(
        json.dumps({"embed_dim": 16, "vision_cfg": TINY_VISION, "text_cfg": TINY_TEXT})
    )
    open_clip.add_model_config(tmp_path / "tiny-clip.json")
    torch.manual_seed(1)
    clip = open_clip.create_model("tiny-clip", pretrained=None).eval()
    weights = tmp_path / "tiny-clip.pt"
    torch.save(clip.state_dict(), weights)
    return weights, clip


def test_the_visual_tower_of_a_clip_checkpoint_is_loaded_frozen_and_out_of_the_module_tree(tiny_clip_weights) -> None:
    weights, clip = tiny_clip_weights
    encoder = ImageFeatureEncoder(CLIPTowerConfig(model_name="tiny-clip", pretrained=None, weights_file=str(weights)))
    images = torch.rand(2, 1, 45, 60)
    features = encoder(images)
    assert features.shape == (2, 16)
    with torch.no_grad():
        resized = torch.nn.functional.interpolate(images, size=(32, 32), mode="bilinear", antialias=True).expand(
            -1, 3, -1, -1
        )
        reference = clip.encode_image((resized - encoder.mean) / encoder.std)
    torch.testing.assert_close(features, reference)
    assert list(encoder.parameters()) == [] and not any(p.requires_grad for p in encoder.load_tower().parameters())


def test_no_visual_weights_fails_fast_naming_the_option(tmp_path: Path) -> None:
    encoder = ImageFeatureEncoder(CLIPTowerConfig(weights_file=str(tmp_path / "missing.pt")))
    with pytest.raises(TextWeightsUnavailable, match="--model.image_encoder.weights_file"):
        encoder.load_tower()
    module = tiny_module(
        image_encoder=CLIPTowerConfig(model_name="ViT-B-32", pretrained="openai", cache_dir=str(tmp_path))
    )
    with pytest.raises(TextWeightsUnavailable, match="image_encoder.random_init"):
        module.setup("fit")


# ------------------------------------------------------------------------------ recipe end to end
@pytest.mark.slow
def test_fit_then_predict_without_the_text_weights(tmp_path: Path, tiny_clip_weights) -> None:
    weights, _ = tiny_clip_weights
    data = write_tiny_training_set(tmp_path / "data")
    sources = mixed_sources(data)
    text_weights = tmp_path / "text-weights.pt"
    text_weights.write_bytes(weights.read_bytes())
    text_args = [
        "--model.text_encoder.model_name",
        "tiny-clip",
        "--model.text_encoder.random_init",
        "false",
        "--model.text_encoder.weights_file",
        str(text_weights),
        "--model.text_encoder.model_config",
        json.dumps({"embed_dim": 16, "text_cfg": TINY_TEXT}),
    ]
    common = [
        "--config",
        str(TINY_CONFIG),
        *text_args,
        "--runs_dir",
        str(tmp_path / "runs"),
        "--run_name",
        "tiny",
        "--trainer.logger",
        "false",
    ]
    fit = run_recipe_process(
        "upfusion",
        "fit",
        *common,
        "--data.sources",
        sources,
        "--data.val_pairs",
        json.dumps([str(data["pairs"])]),
        cwd=tmp_path,
    )
    assert fit.returncode == 0, fit.stderr[-3000:]
    checkpoint = tmp_path / "runs" / "tiny" / "checkpoints" / "last.ckpt"
    assert checkpoint.is_file()

    text_weights.unlink()  # the prompts the checkpoint saw are in its cache

    def predict(output: str, *extra: str) -> subprocess.CompletedProcess:
        pairs = json.dumps([str(data["pairs"])])
        arguments = [
            "--ckpt_path",
            str(checkpoint),
            "--data.predict_pairs",
            pairs,
            "--output_dir",
            str(tmp_path / output),
        ]
        return run_recipe_process("upfusion", "predict", *common, *arguments, *extra, cwd=tmp_path)

    fused = predict("fused")
    assert fused.returncode == 0, fused.stderr[-3000:]
    assert sorted(p.relative_to(tmp_path / "fused").as_posix() for p in (tmp_path / "fused").rglob("*.png")) == [
        "IVIF/p1.png",
        "RESTORE/p0.png",
    ]
    unseen = predict("unseen", "--model.predict_prompt", "a prompt never seen in training")
    assert unseen.returncode != 0 and "a prompt never seen in training" in unseen.stderr


@pytest.mark.slow
def test_two_process_ddp_fit_on_a_task_mix(tmp_path: Path) -> None:
    data = write_tiny_training_set(tmp_path / "data")
    sources = mixed_sources(data)
    ranks = ddp_fit(
        "upfusion",
        [
            "--config",
            str(TINY_CONFIG),
            "--data.sources",
            sources,
            "--trainer.max_steps=3",
            "--trainer.limit_val_batches=0",
            "--trainer.logger=false",
            "--run_name",
            "ddp",
        ],
        tmp_path,
    )
    assert_ranks_agree(ranks, steps=3)
