"""The published GIFNet weights (the authors' ``Final.model``) as a state dict of :class:`GIFNet`.

The official checkpoint is a plain ``state_dict`` of the public code's network (116 tensors). Every
tensor has one place in :class:`GIFNet` built with :data:`OFFICIAL_NETWORK_ARGUMENTS` (the published
sizes and ``norm="image"``, the published revised LayerNorm); the table :func:`official_key_map`
spells out each correspondence. What changes on the way:

- 1x1 convolutions (queries/keys, values, projections, MLPs, the global decoder's pointwise
  layers) become linear layers: (out, in, 1, 1) -> (out, in).
- The revised LayerNorm's weight and bias, (1, C, 1, 1) in the public code, become (C,); its two
  1x1 convs from the std and mean (``meta1``, ``meta2``) become ``rescale`` and ``rebias``
  linear layers, (C, 1, 1, 1) -> (C, 1).
- The branch-specific layers of a block, which the public code keeps side by side in one module
  (``QK`` / ``QK_mfif``, ``norm1`` / ``norm1_mfif``, ...), go to the block of their branch.
- The gating scalars ``weights.i`` / ``weights_mfif.i`` become ``gates[branch, i // 2]``. The
  public forward pass only gates after unshifted (even) blocks, so the odd-index scalars are never
  read there; they are checked to exist and then dropped.
- ``relative_positions`` is a buffer of the log-spaced window offsets; :class:`RelativePositionBias`
  computes the same table itself. It is checked to be equal and then dropped.

Differences that the weights cannot carry, and what they change: the reconstruction decoder ends in
a sigmoid here and in tanh there (the reconstruction is an auxiliary training output; the fused
image does not depend on it), and the public code pads feature maps to a multiple of 4 and then
of the window inside each block, where predict here reflect-pads the input image to a multiple of
the window once, so on images whose sides are not multiples of the window the last rows and
columns differ (under 1% of the pixels on fusion-bench, by up to 60 grey levels there).

Anything that does not fit (a key that no rule covers, a key a rule expects but the file lacks,
a shape that differs) raises :class:`OfficialCheckpointError` listing every problem.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lightning_modules.networks.gifnet import BRANCHES, IVIF_BRANCH, MFIF_BRANCH, GIFNet, RelativePositionBias

OFFICIAL_NETWORK_ARGUMENTS: dict[str, Any] = {
    "encoder_growth": 32,
    "encoder_layers": 3,
    "reconstruction_channels": (64, 32, 16),
    "heads": 2,
    "window_size": 8,
    "branch_depth": 2,
    "mlp_ratio": 2.0,
    "value_kernel": 5,
    "position_hidden": 256,
    "branch_downsample": 1,
    "decoder_pointwise_channels": (98, 128),
    "decoder_channels": (64, 32, 16),
    "norm": "image",
}
"""The :class:`GIFNet` arguments of the published model (the rest keep their defaults)."""

_BLOCKS = "extractor_multask.SwinTransformerSpecific.layer1"
_BRANCH_SUFFIX = {IVIF_BRANCH: "", MFIF_BRANCH: "_mfif"}  # how the public code names each branch's copy


class OfficialCheckpointError(ValueError):
    """The file is not the published GIFNet checkpoint, or not one this mapping knows."""


def _same(tensor: Tensor) -> Tensor:
    return tensor


def _pointwise(tensor: Tensor) -> Tensor:
    """A 1x1 conv's weight (out, in, 1, 1) as a linear layer's (out, in); its bias stays as it is."""
    return tensor.flatten(1) if tensor.dim() == 4 else tensor


def _per_channel(tensor: Tensor) -> Tensor:
    """A (1, C, 1, 1) norm parameter as (C,)."""
    return tensor.reshape(-1)


Rule = tuple[str, Callable[[Tensor], Tensor]]  # our key, and how the official tensor becomes ours


def official_key_map(branch_depth: int = 2) -> dict[str, Rule]:
    """Every key of the official state dict -> where it goes in :class:`GIFNet`'s state dict."""
    rules: dict[str, Rule] = {}
    for index in range(3):
        for kind in ("weight", "bias"):
            rules[f"getSharedFeatures.conv_{index + 1}.conv2d.{kind}"] = (f"encoder.layers.{index}.{kind}", _same)
    # the public decoders put a reflection pad before each conv: convs at Sequential indices 1, 4, 7, 10
    for index in range(4):
        for kind in ("weight", "bias"):
            rules[f"decoder_rec.decoder.{3 * index + 1}.{kind}"] = (f"reconstruction_decoder.{2 * index}.{kind}", _same)
            rules[f"cnnDecoder.decoder.{3 * index + 1}.{kind}"] = (f"fusion_decoder.convs.{2 * index}.{kind}", _same)
    for index in range(2):
        rules[f"cnnDecoder.fuseComplementFeatures.mlp.{2 * index}.weight"] = (
            f"fusion_decoder.pointwise.{index}.weight",
            _pointwise,
        )
    prefix = "extractor_multask.SwinTransformerSpecific"
    for kind in ("weight", "bias"):
        rules[f"{prefix}.patch_unembed.proj.0.{kind}"] = (f"branches.unembed.{kind}", _same)
        for branch, name in enumerate(BRANCHES):
            rules[f"{prefix}.patch_embed_{name}.proj.{kind}"] = (f"branches.embed.{branch}.{kind}", _same)
    for block in range(branch_depth):
        official = f"{_BLOCKS}.blocks.{block}"
        for layer in (0, 2):
            for kind in ("weight", "bias"):
                rules[f"{official}.attn.attn.meta.{layer}.{kind}"] = (
                    f"branches.position_biases.{block}.mlp.{layer}.{kind}",
                    _same,
                )
        for branch, suffix in _BRANCH_SUFFIX.items():
            ours = f"branches.blocks.{branch}.{block}"
            for kind in ("weight", "bias"):
                rules[f"{official}.norm1{suffix}.{kind}"] = (f"{ours}.norm.{kind}", _per_channel)
                rules[f"{official}.norm1{suffix}.meta1.{kind}"] = (f"{ours}.norm.rescale.{kind}", _pointwise)
                rules[f"{official}.norm1{suffix}.meta2.{kind}"] = (f"{ours}.norm.rebias.{kind}", _pointwise)
                rules[f"{official}.attn.conv{suffix}.{kind}"] = (f"{ours}.value_conv.{kind}", _same)
                rules[f"{official}.attn.V{suffix}.{kind}"] = (f"{ours}.value.{kind}", _pointwise)
                rules[f"{official}.attn.proj{suffix}.{kind}"] = (f"{ours}.projection.{kind}", _pointwise)
                rules[f"{official}.attn.QK{suffix}.{kind}"] = (f"{ours}.query_key.{kind}", _pointwise)
                for layer in (0, 2):
                    rules[f"{official}.mlp{suffix}.mlp.{layer}.{kind}"] = (f"{ours}.mlp.{layer}.{kind}", _pointwise)
    return rules


def _gate_keys(branch_depth: int) -> dict[str, tuple[int, int] | None]:
    """Official gating scalars -> (branch, gate index) in ``branches.gates``, or None where never read."""
    keys: dict[str, tuple[int, int] | None] = {}
    for branch, suffix in _BRANCH_SUFFIX.items():
        for block in range(branch_depth):
            keys[f"{_BLOCKS}.weights{suffix}.{block}"] = (branch, block // 2) if block % 2 == 0 else None
    return keys


def _relative_position_keys(branch_depth: int) -> list[str]:
    return [f"{_BLOCKS}.blocks.{block}.attn.attn.relative_positions" for block in range(branch_depth)]


def convert_official_state_dict(
    official: Mapping[str, Tensor], network: GIFNet, source: str = "checkpoint"
) -> dict[str, Tensor]:
    """The official state dict as a complete state dict of ``network`` (built with :data:`OFFICIAL_NETWORK_ARGUMENTS`).

    Raises:
        OfficialCheckpointError: listing every official key no rule maps, every key a rule expects
            that the file lacks, every shape that does not fit, and every parameter of ``network``
            left without a value.
    """
    depth = network.branches.depth
    rules = official_key_map(depth)
    gates = _gate_keys(depth)
    positions = _relative_position_keys(depth)
    target = network.state_dict()
    problems: list[str] = []
    known = set(rules) | set(gates) | set(positions)
    problems += [f"unmapped key {key} {tuple(official[key].shape)}" for key in official if key not in known]
    problems += [f"missing key {key}" for key in sorted(known - set(official))]
    converted: dict[str, Tensor] = {}
    for key, (ours, transform) in rules.items():
        if key not in official:
            continue
        tensor = transform(official[key])
        if ours not in target:
            problems.append(f"{key} maps to {ours}, which the network does not have (is norm='image'?)")
        elif tensor.shape != target[ours].shape:
            problems.append(f"{key} {tuple(official[key].shape)} does not fit {ours} {tuple(target[ours].shape)}")
        else:
            converted[ours] = tensor.to(target[ours].dtype)
    gate_values = target["branches.gates"].clone()
    for key, place in gates.items():
        if key in official and place is not None:
            if official[key].numel() != 1:
                problems.append(f"{key} {tuple(official[key].shape)} is not one gating scalar")
            else:
                gate_values[place] = official[key].reshape(())
    converted["branches.gates"] = gate_values
    expected_offsets = RelativePositionBias(network.window_size, 1).log_offsets
    for key in positions:
        if key in official and not torch.allclose(official[key], expected_offsets):
            problems.append(f"{key} is not the log-spaced offset table of a {network.window_size}-pixel window")
    problems += [f"no official tensor for {key}" for key in target if key not in converted]
    if problems:
        listing = "\n  ".join(problems)
        raise OfficialCheckpointError(
            f"{source} is not the published GIFNet checkpoint this importer maps "
            f"({len(problems)} problems; nothing was imported):\n  {listing}"
        )
    return converted


def load_official_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read the official file: a plain state dict of tensors (no pickled code is run)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (the published GIFNet checkpoint is named Final.model)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated download or another format
        raise OfficialCheckpointError(f"{path}: cannot be read as a PyTorch state dict ({error})") from error
    if not isinstance(state, Mapping) or not all(isinstance(value, Tensor) for value in state.values()):
        raise OfficialCheckpointError(f"{path}: expected a plain state dict of tensors (the published Final.model)")
    return dict(state)


def official_gifnet(path: str | Path, **network_arguments: Any) -> GIFNet:
    """A :class:`GIFNet` with the published weights; ``network_arguments`` may set e.g. ``inference_chunk_pixels``."""
    network = GIFNet(**{**OFFICIAL_NETWORK_ARGUMENTS, **network_arguments})
    network.load_state_dict(convert_official_state_dict(load_official_state_dict(path), network, str(path)))
    return network
