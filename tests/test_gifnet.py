"""The GIFNet network: published size, shapes, cross-fusion gating, the secondary branch as a trained helper."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lightning_modules.networks.gifnet import (
    IVIF_BRANCH,
    MFIF_BRANCH,
    GIFNet,
    RelativePositionBias,
    WindowAttentionBlock,
)

TINY = dict(
    encoder_growth=4,
    encoder_layers=2,
    reconstruction_channels=(8,),
    heads=2,
    window_size=4,
    position_hidden=16,
    decoder_pointwise_channels=(8,),
    decoder_channels=(8,),
)


def tiny_network(**overrides: object) -> GIFNet:
    torch.manual_seed(0)
    return GIFNet(**{**TINY, **overrides}).eval()


def sources(batch: int = 2, height: int = 16, width: int = 24, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 1, height, width, generator=generator), torch.rand(
        batch, 1, height, width, generator=generator
    )


def test_default_size_matches_the_published_model() -> None:
    network = GIFNet()
    parameters = sum(parameter.numel() for parameter in network.parameters())
    assert abs(parameters - 0.82e6) / 0.82e6 < 0.02, parameters
    assert network.encoder.out_channels == 98
    assert network.size_multiple == 8


def test_full_size_network_fuses_and_reconstructs_in_unit_range() -> None:
    torch.manual_seed(0)
    network = GIFNet().eval()
    a, b = sources(height=16, width=24)
    with torch.no_grad():
        features = network.encode(a, b)
        fused = network.fuse_features(features)
        rebuilt = network.reconstruct(features)
    assert features.shape == (2, 98, 16, 24)
    for image in (fused, rebuilt):
        assert image.shape == (2, 1, 16, 24)
        assert image.min() >= 0 and image.max() <= 1


def test_sizes_must_be_multiples_of_the_window_times_downsampling() -> None:
    network = tiny_network(branch_downsample=2)
    assert network.size_multiple == 8
    a, b = sources(height=16, width=24)
    assert network(a, b).shape == (2, 1, 16, 24)
    with pytest.raises(ValueError, match="size_multiple=8"):
        network(*sources(height=12, width=24))


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_branch_depths_and_downsampling_keep_the_shape(depth: int) -> None:
    for downsample in (1, 2):
        network = tiny_network(branch_depth=depth, branch_downsample=downsample)
        a, b = sources(height=16, width=16)
        assert network(a, b, IVIF_BRANCH).shape == (2, 1, 16, 16)


def perturb_embedding(network: GIFNet, branch: int):
    """Add noise to what a branch's attention blocks receive: its embedded input."""

    def hook(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
        return output + torch.randn_like(output)

    return network.branches.embed[branch].register_forward_hook(hook)


@pytest.mark.parametrize("primary", [IVIF_BRANCH, MFIF_BRANCH])
def test_gating_couples_the_branches(primary: int) -> None:
    """Changing the other branch's input changes this branch's output, through the gate alpha."""
    network = tiny_network()
    a, b = sources()
    with torch.no_grad():
        before = network(a, b, primary)
        handle = perturb_embedding(network, 1 - primary)
        after = network(a, b, primary)
        network.branches.gates.zero_()
        ungated = network(a, b, primary)
        handle.remove()
        ungated_clean = network(a, b, primary)
    assert not torch.allclose(before, after, atol=1e-6)
    # with the gates at zero the other branch no longer reaches this one
    assert torch.allclose(ungated, ungated_clean)


def test_secondary_branch_attends_with_the_primary_queries() -> None:
    network = tiny_network()
    a, b = sources()
    captured: list[torch.Tensor] = []
    secondary_block = network.branches.blocks[IVIF_BRANCH][0]
    secondary_block.register_forward_hook(lambda module, inputs, output: captured.append(output[0]))
    with torch.no_grad():
        network(a, b, MFIF_BRANCH)
        primary_queries = network.branches.blocks[MFIF_BRANCH][0].query_key.weight
        primary_queries[: primary_queries.shape[0] // 2] += torch.randn_like(
            primary_queries[: primary_queries.shape[0] // 2]
        )  # queries only
        network(a, b, MFIF_BRANCH)
    assert not torch.allclose(captured[0], captured[1], atol=1e-6)


@pytest.mark.parametrize("primary", [IVIF_BRANCH, MFIF_BRANCH])
def test_a_loss_on_one_branch_trains_the_other_as_its_helper(primary: int) -> None:
    """As published: the gate and the shared queries carry the loss into the secondary branch's blocks that ran."""
    network = tiny_network().train()
    a, b = sources()
    network(a, b, primary).square().mean().backward()
    branches = network.branches
    helper_modules = (branches.embed[1 - primary], *branches.blocks[1 - primary][: branches.secondary_depth])
    for module in (*helper_modules, branches.embed[primary], branches.blocks[primary], network.encoder):
        assert any(parameter.grad is not None and parameter.grad.any() for parameter in module.parameters())
    for block in branches.blocks[1 - primary][branches.secondary_depth :]:  # never run for this branch
        assert all(parameter.grad is None for parameter in block.parameters())
    assert branches.gates.grad[primary].abs().sum() > 0
    assert not branches.gates.grad[1 - primary].any()


def test_a_mixed_batch_runs_each_sample_through_its_own_branch() -> None:
    network = tiny_network()
    a, b = sources(batch=3)
    branch = torch.tensor([MFIF_BRANCH, IVIF_BRANCH, MFIF_BRANCH])
    with torch.no_grad():
        mixed = network(a, b, branch)
        through_ivif = network(a, b, IVIF_BRANCH)
        through_mfif = network(a, b, MFIF_BRANCH)
    assert torch.allclose(mixed[1], through_ivif[1], atol=1e-6)
    assert torch.allclose(mixed[[0, 2]], through_mfif[[0, 2]], atol=1e-6)
    assert not torch.allclose(through_ivif, through_mfif)


def test_samples_do_not_interact() -> None:
    """Per-pixel norms and per-window attention: a sample's fusion does not depend on its batch."""
    network = tiny_network()
    a, b = sources(batch=2)
    with torch.no_grad():
        together = network(a, b)
        alone = network(a[:1], b[:1])
    assert torch.allclose(together[:1], alone, atol=1e-6)


def whole_map_block(block: WindowAttentionBlock, tokens: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The block written plainly on the whole map: reflect-pad, cut windows, softmax attention, conv."""
    batch, height, width, channels = tokens.shape
    size, shift, heads = block.window_size, block.shift, block.heads
    normed = block.norm(tokens)
    query_weight, key_weight = block.query_key.weight.split(channels)
    query_bias, key_bias = block.query_key.bias.split(channels)
    query, key, value = (
        F.linear(normed, query_weight, query_bias),
        F.linear(normed, key_weight, key_bias),
        block.value(normed),
    )

    def windows(tokens_: torch.Tensor) -> torch.Tensor:
        padded = (
            F.pad(tokens_.permute(0, 3, 1, 2), (shift, size - shift, shift, size - shift), mode="reflect")
            if shift
            else tokens_.permute(0, 3, 1, 2)
        )
        rows, columns = padded.shape[-2] // size, padded.shape[-1] // size
        split = padded.reshape(batch, heads, channels // heads, rows, size, columns, size)
        return split.permute(0, 3, 5, 1, 4, 6, 2).reshape(batch, rows, columns, heads, size * size, channels // heads)

    scores = windows(query) @ windows(key).transpose(-1, -2) / (channels // heads) ** 0.5 + bias
    attended = scores.softmax(dim=-1) @ windows(value)  # (B, rows, columns, heads, N, d)
    rows, columns = attended.shape[1:3]
    attended = attended.reshape(batch, rows, columns, heads, size, size, -1).permute(0, 1, 4, 2, 5, 3, 6)
    attended = attended.reshape(batch, rows * size, columns * size, channels)[
        :, shift : shift + height, shift : shift + width
    ]
    halo = block.value_conv.kernel_size[0] // 2
    local = F.conv2d(
        F.pad(value.permute(0, 3, 1, 2), (halo,) * 4, mode="reflect"),
        block.value_conv.weight,
        block.value_conv.bias,
        groups=channels,
    )
    output = tokens + block.projection(attended + local.permute(0, 2, 3, 1))
    return output + block.mlp(output)


@pytest.mark.parametrize("shift", [0, 2])
@pytest.mark.parametrize("chunk_pixels", [16, 200, 1 << 16])
def test_strips_give_the_whole_map_result(shift: int, chunk_pixels: int) -> None:
    torch.manual_seed(0)
    block = WindowAttentionBlock(
        dim=8, heads=2, window_size=4, shift=shift, mlp_ratio=2.0, value_kernel=5, chunk_pixels=chunk_pixels
    )
    bias = RelativePositionBias(window_size=4, heads=2, hidden=16)()
    tokens = torch.randn(2, 12, 16, 8)
    with torch.no_grad():  # strips are an inference path; with autograd the block runs whole
        output, queries = block(tokens, bias)
        assert len(queries) == (1 if chunk_pixels == 1 << 16 else 3 if shift == 0 else 4)  # strips of 4 rows
        assert torch.allclose(output, whole_map_block(block, tokens, bias), atol=1e-5)
        # the strip queries, handed to a second block, stand in for its own
        again, _ = block(tokens, bias, foreign_queries=queries)
        assert torch.allclose(again, output, atol=1e-6)
    with_autograd, _ = block(tokens, bias)
    assert torch.allclose(with_autograd, output, atol=1e-5)


def test_chunking_does_not_change_the_fusion() -> None:
    a, b = sources(height=16, width=24)
    branch = torch.tensor([IVIF_BRANCH, MFIF_BRANCH])
    with torch.no_grad():
        chunked_network = tiny_network(inference_chunk_pixels=32)
        chunked = chunked_network(a, b, branch)
        rebuilt_in_strips = chunked_network.reconstruct(chunked_network.encode(a, b))
        whole_network = tiny_network(inference_chunk_pixels=1 << 20)
        whole = whole_network(a, b, branch)
        rebuilt_whole = whole_network.reconstruct(whole_network.encode(a, b))
    assert torch.allclose(chunked, whole, atol=1e-6)
    assert torch.allclose(rebuilt_in_strips, rebuilt_whole, atol=1e-6)
    # training: the primary branch runs whole under autograd, the secondary must match it
    trained = chunked_network.train()(a, b, branch)
    assert torch.allclose(trained, whole, atol=1e-6)
