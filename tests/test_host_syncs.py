"""Host-device synchronisation in the training step: the counter (bench/host_syncs.py) and GIFNet's step without any.

On a GPU, every value the host reads from the device (``.item()``, ``if tensor``, ``nonzero``'s size, ``.tolist()``)
stalls the queue. GIFNet's step groups samples and names its logged terms from the host's copy of the batch
metadata instead; these tests count on the CPU what a GPU would wait for, and check that the grouping computes what
per-sample steps compute.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from test_gifnet_module import mixed_batch, tiny_module

from datamodules.schema import TASKS

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from host_syncs import HostSyncCounter  # noqa: E402

# every kind of sample the losses tell apart: supervised and unsupervised multi-focus and multi-exposure,
# restoration (no b), tasks of both branches under per_task
TASK_MIX = (
    ["ivif", "mfif", "mfif", "meif", "meif", "restore", "med"],
    [False, True, False, False, True, True, False],
)


@pytest.fixture(autouse=True)
def one_thread() -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_the_counter_counts_what_would_wait_for_the_device_and_nothing_on_the_host() -> None:
    device_values, host_values = torch.rand(8), torch.tensor([1.0, 2.0])
    with HostSyncCounter([device_values]) as counter:
        derived = device_values * 2  # computed from a device tensor: on the device too
        derived.nonzero()
        derived[derived > 1]
        float(derived.sum())
        bool(derived.any())
        derived.tolist()
        torch.tensor([0.5], device=derived.device)  # Python data copied to the device
        derived.nonzero_static(size=3)  # size given: no wait
        host_values[0].item(), host_values.tolist(), bool(host_values.sum() > 0)  # host tensors: free
    assert counter.counts == {
        "size from data: nonzero": 1,
        "size from data: boolean-mask indexing": 1,
        "value read: .item(), bool(), int()": 2,
        "device-to-host copy: .tolist()": 1,
        "host-to-device copy: torch.tensor(data, device=...)": 1,
    }


def optimizer_step(module: torch.nn.Module, batch: dict, optimizer: torch.optim.Optimizer) -> None:
    optimizer.zero_grad(set_to_none=True)
    module.training_losses(batch)["loss"].backward()
    optimizer.step()


@pytest.mark.parametrize("inference_branch", ["mfif", "per_task"])
def test_a_gifnet_training_step_never_waits_for_the_device(inference_branch: str) -> None:
    module = tiny_module(inference_branch=inference_branch)
    batch = module.on_before_batch_transfer(mixed_batch(*TASK_MIX), 0)  # as Lightning calls it
    optimizer = module.build_optimizer()
    optimizer_step(module, batch, optimizer)  # the optimizer's state exists from here on, as in training
    tensors = [value for value in batch.values() if isinstance(value, torch.Tensor)]
    with HostSyncCounter([*tensors, *module.parameters(), *module.buffers()]) as counter:
        optimizer_step(module, batch, optimizer)
    assert counter.total == 0, dict(counter.counts)


def test_without_the_host_metadata_the_counter_sees_the_read() -> None:
    # the same step on a batch that skipped on_before_batch_transfer reads the task ids from the device once
    module = tiny_module(inference_branch="per_task")
    batch = mixed_batch(*TASK_MIX)
    tensors = [value for value in batch.values() if isinstance(value, torch.Tensor)]
    with HostSyncCounter([*tensors, *module.parameters()]) as counter:
        module.training_losses(batch)
    assert counter.counts["device-to-host copy: .tolist()"] == 4  # task, has_b, has_gt, degradation


def one_sample(batch: dict, index: int) -> dict:
    return {key: value[index : index + 1] for key, value in batch.items() if isinstance(value, torch.Tensor)}


@pytest.mark.parametrize("inference_branch", ["mfif", "per_task"])
def test_grouped_losses_and_gradients_equal_the_mean_of_per_sample_steps(inference_branch: str) -> None:
    # each sample's loss depends on that sample alone (per-pixel norm, per-sample source weights), and the total
    # is the mean over samples: the mixed batch, grouped by branch and by term, must give the mean of its
    # samples' one-sample steps, which need no grouping at all
    module = tiny_module(inference_branch=inference_branch)
    batch = mixed_batch(*TASK_MIX)
    parameters = [parameter for parameter in module.parameters() if parameter.requires_grad]
    losses = module.training_losses(batch)
    gradients = torch.autograd.grad(losses["loss"], parameters, allow_unused=True)

    singles = [module.training_losses(one_sample(batch, index)) for index in range(len(TASK_MIX[0]))]
    expected_loss = torch.stack([single["loss"] for single in singles]).mean()
    expected_gradients = torch.autograd.grad(expected_loss, parameters, allow_unused=True)
    torch.testing.assert_close(losses["loss"], expected_loss, rtol=1e-5, atol=1e-6)
    for parameter_name, got, expected in zip(dict(module.named_parameters()), gradients, expected_gradients):
        if expected is None:
            assert got is None or not got.any(), parameter_name
        else:
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6, msg=parameter_name)

    # a logged per-task term is the mean over that task's samples of their own values
    per_task_terms = [name for name in losses if name.split("/")[0] in TASKS]
    assert {"mfif/fidelity_l1", "mfif/gradient", "meif/intensity", "meif/fidelity_ssim"} <= set(per_task_terms)
    for name in per_task_terms:
        values = [single[name] for single in singles if name in single]  # a sample logs its own task's terms
        torch.testing.assert_close(losses[name], torch.stack(values).mean(), rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("family", ["upfusion", "cmifusion"])
def test_the_text_guided_losses_group_samples_without_asking_the_device(family: str) -> None:
    # what is left in their steps is the prompt embeddings' copy to the device (bench/RESULTS.md)
    import test_cmifusion
    import test_lure
    import test_upfusion

    module = {"upfusion": test_upfusion.tiny_module, "cmifusion": test_cmifusion.tiny_module}[family]()
    batch = module.on_before_batch_transfer(test_lure.mixed_batch(), 0)
    optimizer = torch.optim.AdamW(module.parameters())
    optimizer_step(module, batch, optimizer)
    tensors = [value for value in batch.values() if isinstance(value, torch.Tensor)]
    with HostSyncCounter([*tensors, *module.parameters(), *module.buffers()]) as counter:
        optimizer_step(module, batch, optimizer)
    data_sized = {name: count for name, count in counter.counts.items() if name.startswith("size from data")}
    assert not data_sized, data_sized
