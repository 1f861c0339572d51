"""GIFNetModule: per-task losses on their own samples, one optimizer step per mixed batch, fusing."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch

from datamodules.schema import DEGRADATIONS, TASK_IDS, TASKS, collate
from lightning_modules.gifnet import NETWORK_ARGUMENTS, GIFNetModule
from lightning_modules.inference.tiling import fuse_padded
from lightning_modules.networks.gifnet import IVIF_BRANCH, MFIF_BRANCH, GIFNet

TINY = dict(
    encoder_growth=4,
    encoder_layers=2,
    reconstruction_channels=(8,),
    window_size=4,
    position_hidden=16,
    decoder_pointwise_channels=(8,),
    decoder_channels=(8,),
    ms_ssim_scales=3,
    warmup_steps=0,
)


def tiny_module(**overrides: object) -> GIFNetModule:
    torch.manual_seed(0)
    return GIFNetModule(**{**TINY, **overrides})


def mixed_batch(tasks: list[str], has_gt: list[bool], size: int = 32, seed: int = 0) -> dict:
    """A collated batch; restoration samples have no b, as in the shards."""
    generator = torch.Generator().manual_seed(seed)
    samples = []
    for task, with_gt in zip(tasks, has_gt):
        image = lambda: torch.rand(1, size, size, generator=generator)  # noqa: E731
        samples.append(
            {
                "a": image(),
                "b": None if task == "restore" else image(),
                "gt": image() if with_gt else None,
                "task": TASK_IDS[task],
                "degradation": torch.zeros(len(DEGRADATIONS)),
            }
        )
    return collate(samples)


MIX = (["ivif", "mfif", "meif", "med", "restore", "nir"], [False, True, False, False, True, False])


def test_module_network_defaults_are_the_networks() -> None:
    module_defaults = inspect.signature(GIFNetModule).parameters
    for name, parameter in inspect.signature(GIFNet).parameters.items():
        if name in NETWORK_ARGUMENTS:
            assert module_defaults[name].default == parameter.default, name


def test_each_task_gets_its_own_terms() -> None:
    losses = tiny_module().training_losses(mixed_batch(*MIX))
    expected = {
        "loss",
        "recon/l1",
        "recon/ms_ssim",
        *(f"{task}/{term}" for task in ("ivif", "meif", "med", "nir") for term in ("intensity", "gradient")),
        *(f"{task}/fidelity_{term}" for task in ("mfif", "restore") for term in ("l1", "ssim", "gradient")),
    }
    assert set(losses) == expected
    assert all(torch.isfinite(value) and value.dim() == 0 for value in losses.values())


@pytest.mark.parametrize(
    "term, samples_it_reaches",
    [("mfif/fidelity_l1", {1}), ("ivif/intensity", {0}), ("meif/gradient", {2}), ("restore/fidelity_ssim", {4})],
)
def test_a_task_term_reaches_only_that_tasks_samples(term: str, samples_it_reaches: set[int]) -> None:
    batch = mixed_batch(*MIX)
    batch["a"].requires_grad_(True)
    tiny_module().training_losses(batch)[term].backward()
    reached = {index for index in range(len(MIX[0])) if batch["a"].grad[index].abs().sum() > 0}
    assert reached == samples_it_reaches


def test_reconstruction_targets_the_second_source_or_the_clean_image() -> None:
    module = tiny_module()
    batch = mixed_batch(["ivif", "restore"], [False, True])
    losses = module.training_losses(batch)
    with torch.no_grad():
        b = torch.stack([batch["b"][0], batch["a"][1]])  # a restoration sample is fused with itself
        rebuilt = module.network.reconstruct(module.network.encode(batch["a"], b))
    target = torch.stack([batch["b"][0], batch["gt"][1]])
    assert losses["recon/l1"].item() == pytest.approx((rebuilt - target).abs().mean().item(), rel=1e-5)


def test_multi_exposure_samples_use_per_pixel_exposure_weights() -> None:
    module = tiny_module()
    batch = mixed_batch(["ivif", "meif"], [False, False])
    weights = module._source_weights(batch["a"], batch["b"], batch["task"], batch["task"].tolist())
    assert weights.shape == (2, 2, 32, 32)
    assert torch.allclose(weights[0], weights[0, :, :1, :1].expand(2, 32, 32))  # ivif: one weight per source
    assert weights[1].std(dim=(1, 2)).min() > 0  # meif: varies across the image


def test_losses_decrease_when_overfitting_one_batch() -> None:
    # each branch with its own tasks: with one path for all six, the random (unrelated) multi-focus
    # target of this batch competes with every other task's term on the same output
    module = tiny_module(inference_branch="per_task")
    batch = mixed_batch(*MIX)
    optimizer = torch.optim.Adam(module.parameters(), lr=3e-3)
    history = []
    for _ in range(40):
        losses = module.training_losses(batch)
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
        history.append({name: value.item() for name, value in losses.items()})
    assert history[-1]["loss"] < 0.8 * history[0]["loss"]
    for term in ("recon/l1", "mfif/fidelity_l1", "ivif/intensity"):
        assert history[-1][term] < history[0][term], term


def test_one_optimizer_step_per_mixed_batch(tmp_path: Path) -> None:
    import pytorch_lightning as pl

    batches = [mixed_batch(*MIX, seed=seed) for seed in range(3)]
    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        limit_val_batches=0,
        default_root_dir=tmp_path,
    )
    trainer.fit(tiny_module(), train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))
    assert trainer.global_step == len(batches)


def test_fuse_uses_the_configured_branch() -> None:
    batch = mixed_batch(["ivif", "mfif"], [False, True])
    a, b, task = batch["a"], batch["b"], batch["task"]
    for inference_branch, expected_branches in (
        ("mfif", [MFIF_BRANCH] * 2),
        ("ivif", [IVIF_BRANCH] * 2),
        ("per_task", [IVIF_BRANCH, MFIF_BRANCH]),
    ):
        module = tiny_module(inference_branch=inference_branch).eval()
        with torch.no_grad():
            fused = module.fuse(a, b, task)
            expected = module.network(a, b, torch.tensor(expected_branches))
        assert torch.equal(fused, expected)


def test_checkpoint_hyperparameters_leave_out_predict_time_arguments() -> None:
    # saved values would override the command line of a later `predict --ckpt_path` (LightningCLI)
    module = tiny_module(predict_tile_size=64, inference_branch="ivif", inference_chunk_pixels=1024)
    assert set(GIFNetModule.predict_time_arguments) >= {"predict_tile_size", "predict_tile_overlap"}
    assert not set(module.hparams) & set(GIFNetModule.predict_time_arguments)
    assert module.hparams["window_size"] == TINY["window_size"] and module.network.inference_chunk_pixels == 1024
    # which branch fuses changes the function computed: it belongs to the checkpoint
    assert module.hparams["inference_branch"] == "ivif"


def test_odd_sizes_are_padded_by_the_caller() -> None:
    module = tiny_module(branch_downsample=2).eval()
    assert module.size_multiple == 8
    generator = torch.Generator().manual_seed(3)
    a, b = torch.rand(1, 1, 21, 35, generator=generator), torch.rand(1, 1, 21, 35, generator=generator)
    with torch.no_grad():
        fused = fuse_padded(module.fuse, a, b, torch.tensor([TASK_IDS["ivif"]]), module.size_multiple)
        assert fused.shape == (1, 1, 21, 35)
        with pytest.raises(ValueError, match="size_multiple"):
            module.fuse(a, b, torch.tensor([TASK_IDS["ivif"]]))


def test_bad_settings_are_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown task 'ivf'"):
        tiny_module(ivif_branch_tasks=("ivf",))
    without_weights = tiny_module(energy_backbone_weights=str(tmp_path / "missing.pth"))
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        without_weights.setup("fit")  # fit stops at start; validate, test and predict do not need the file
    with pytest.raises(ValueError, match="ms_ssim_scales"):
        tiny_module(ms_ssim_scales=6)


def test_losses_stay_float32_under_bf16_autocast() -> None:
    """bf16-mixed training: the network may run in bfloat16, the SSIM-family losses must not."""
    module = tiny_module()
    batch = mixed_batch(*MIX)
    exact = module.training_losses(batch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = module.training_losses(batch)
    for name, value in mixed.items():
        assert value.dtype == torch.float32, name
        assert value.item() == pytest.approx(exact[name].item(), rel=0.05, abs=5e-3), name


@pytest.mark.parametrize("inference_branch", ["mfif", "per_task"])
@pytest.mark.parametrize("task", TASKS)
def test_one_training_step_on_a_task_trains_the_branch_that_fuses_it(inference_branch: str, task: str) -> None:
    module = tiny_module(inference_branch=inference_branch)
    ivif_tasks = inspect.signature(GIFNetModule).parameters["ivif_branch_tasks"].default
    fusing = IVIF_BRANCH if inference_branch == "per_task" and task in ivif_tasks else MFIF_BRANCH
    branch_parameters = [
        *module.network.branches.embed[fusing].parameters(),
        *module.network.branches.blocks[fusing].parameters(),
    ]
    before = [parameter.detach().clone() for parameter in branch_parameters]
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-3)
    batch = mixed_batch([task] * 2, [task in ("mfif", "restore")] * 2)
    module.training_losses(batch)["loss"].backward()
    optimizer.step()
    unchanged = [index for index, (old, new) in enumerate(zip(before, branch_parameters)) if torch.equal(old, new)]
    assert not unchanged, f"{task}: parameters {unchanged} of the branch that fuses it did not train"


def test_every_parameter_gets_a_gradient_whatever_the_batch_trains() -> None:
    """Plain DDP reduces every parameter each step: none may be left without a gradient."""
    for inference_branch in ("mfif", "per_task"):
        module = tiny_module(inference_branch=inference_branch)
        module.training_losses(mixed_batch(["ivif", "meif"], [False, False]))["loss"].backward()
        missing = [name for name, parameter in module.named_parameters() if parameter.grad is None]
        assert not missing, f"{inference_branch}: no gradient for {missing}"


def test_multi_focus_pairs_without_a_target_are_weighted_by_focus() -> None:
    module = tiny_module()
    batch = mixed_batch(["mfif", "ivif"], [False, False])
    sharp = batch["a"][0].clone()
    blurred = torch.nn.functional.avg_pool2d(sharp[None], 5, stride=1, padding=2, count_include_pad=False)[0]
    batch["a"][0, :, :, :16], batch["b"][0, :, :, :16] = sharp[:, :, :16], blurred[:, :, :16]  # a in focus left
    batch["a"][0, :, :, 16:], batch["b"][0, :, :, 16:] = blurred[:, :, 16:], sharp[:, :, 16:]  # b in focus right
    weights = module._source_weights(batch["a"], batch["b"], batch["task"], batch["task"].tolist())
    assert weights[0, 0, :, 4:12].min() == 1 and weights[0, 1, :, 20:28].min() == 1
    assert torch.allclose(weights[1], weights[1, :, :1, :1].expand(2, 32, 32))  # ivif: one weight per source


def test_the_backbone_stays_out_of_the_checkpoint_and_the_optimiser(tmp_path: Path) -> None:
    import torchvision.models as models

    weights = tmp_path / "resnet18.pth"
    torch.save(models.resnet18(weights=None).state_dict(), weights)
    module = tiny_module(energy_backbone_weights=str(weights), energy_backbone="resnet18")
    module.setup("fit")
    losses = module.training_losses(mixed_batch(["ivif", "med"], [False, False]))
    assert torch.isfinite(losses["loss"])
    assert all(name.startswith("network.") for name in module.state_dict())
    assert {id(parameter) for parameter in module.parameters()} == {id(p) for p in module.network.parameters()}
    # predict from the saved weights needs only the fusion network, not the backbone's file
    weights.unlink()
    restored = tiny_module(energy_backbone_weights=str(weights), energy_backbone="resnet18")
    restored.load_state_dict(module.state_dict())
    batch = mixed_batch(["ivif"], [False])
    with torch.no_grad():
        assert torch.equal(
            restored.eval().fuse(batch["a"], batch["b"], batch["task"]),
            module.eval().fuse(batch["a"], batch["b"], batch["task"]),
        )
