"""The GIFNet network: three branches that let low-level fusion tasks interact (CVPR 2025).

The network (:class:`GIFNet`), with the published sizes as constructor defaults (0.82 M parameters):

- A shared encoder on the two sources' luminance stacked as 2 channels: densely connected 3x3
  conv + ReLU layers (reflect padding); its output concatenates the input and every layer
  (2 + 3 x 32 = 98 channels) at full resolution.
- A reconstruction decoder (98 -> 64 -> 32 -> 16 -> 1, sigmoid) that rebuilds the second source
  from the shared features: an auxiliary task that keeps the features general.
- Two task branches, infrared-visible (IVIF) and multi-focus (MFIF), each a 3x3 embedding and a
  stack of windowed self-attention blocks, coupled by cross-fusion gating (see
  :class:`CrossGatedBranches`), and a shared 3x3 un-embedding.
- A global decoder: concat(encoder features, branch features) -> 1x1 convs -> 3x3 convs -> 1
  channel, tanh mapped to [0, 1].

Where this deliberately departs from the public implementation (each departure fixes a defect or
makes inference cheaper without changing what is computed):

- The reconstruction decoder ends in a sigmoid, so its output lives in [0, 1] like its target.
- The secondary branch is only run up to the last block whose output the trained branch reads.
- Blocks normalise with a per-pixel LayerNorm by default instead of the published norm over the
  whole image, so a tile fuses the same as the full image around it (predict can fuse large
  images in tiles). ``norm="image"`` selects the published one (:class:`ImageLayerNorm`), which
  the published weights need (:mod:`lightning_modules.networks.gifnet_official` imports them).
- At inference every stage runs in horizontal strips with exact halos (:func:`in_row_strips`,
  :class:`WindowAttentionBlock`): the result is unchanged, memory is bounded and no allocation is
  large enough to cost page faults on every call.
- ``branch_downsample`` can run the task branches at reduced resolution (``gifnet-fast``).

:class:`lightning_modules.gifnet.GIFNetModule` trains it on mixed-task batches with per-task losses.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_modules.networks.layers import conv3x3, in_row_strips, receptive_radius, true_indices

IVIF_BRANCH = 0
"""Index of the infrared-visible branch (the ``branch`` argument of :meth:`GIFNet.fuse_features`)."""
MFIF_BRANCH = 1
"""Index of the multi-focus branch; the public model fuses every task through it at inference."""
BRANCHES: tuple[str, ...] = ("ivif", "mfif")
BlockNorm = Literal["pixel", "image"]
"""How attention blocks normalise their input: ``pixel`` (LayerNorm over each pixel's channels) or
``image`` (the published revised LayerNorm over each sample's whole map, :class:`ImageLayerNorm`)."""


def to_tokens(feature_map: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, H, W, C), contiguous; free when the map is in channels-last memory format."""
    return feature_map.permute(0, 2, 3, 1).contiguous()


def to_feature_map(tokens: Tensor) -> Tensor:
    """(B, H, W, C) -> (B, C, H, W) as a channels-last view (no copy), the fast layout for CPU convs."""
    return tokens.permute(0, 3, 1, 2)


class DenseEncoder(nn.Module):
    """Densely connected 3x3 conv + ReLU layers; the output concatenates the input and every layer.

    Args:
        in_channels: Channels of the stacked sources (2 luminance planes).
        growth: Output channels of each layer.
        layers: Number of layers.
    """

    def __init__(self, in_channels: int = 2, growth: int = 32, layers: int = 3) -> None:
        super().__init__()
        self.layers = nn.ModuleList(conv3x3(in_channels + index * growth, growth) for index in range(layers))
        self.out_channels = in_channels + layers * growth

    def forward(self, sources: Tensor) -> Tensor:
        features = sources
        for conv in self.layers:
            features = torch.cat([features, F.relu(conv(features))], dim=1)
        return features


def conv_decoder(in_channels: int, hidden_channels: tuple[int, ...]) -> nn.Sequential:
    """3x3 conv + ReLU layers through ``hidden_channels``, then a 3x3 conv to one channel (no activation)."""
    layers: list[nn.Module] = []
    channels = in_channels
    for width in hidden_channels:
        layers += [conv3x3(channels, width), nn.ReLU(inplace=True)]
        channels = width
    layers.append(conv3x3(channels, 1))
    return nn.Sequential(*layers)


class RelativePositionBias(nn.Module):
    """Attention bias of every query-key offset inside a window, predicted by a small MLP.

    The MLP reads the log-spaced offset (sign(d) log(1 + |d|) per axis), so it is a smooth function of
    the offset rather than a free table.

    Args:
        window_size: Side of the square attention window.
        heads: Attention heads (one bias map each).
        hidden: Hidden width of the MLP.
    """

    def __init__(self, window_size: int, heads: int, hidden: int = 256) -> None:
        super().__init__()
        axis = torch.arange(window_size)
        coords = torch.stack(torch.meshgrid(axis, axis, indexing="ij")).flatten(1)  # (2, N)
        offsets = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0).float()  # (N, N, 2)
        self.register_buffer("log_offsets", torch.sign(offsets) * torch.log1p(offsets.abs()), persistent=False)
        self.mlp = nn.Sequential(nn.Linear(2, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, heads))

    def forward(self) -> Tensor:
        """The bias as an additive attention mask, (1, heads, N, N)."""
        return self.mlp(self.log_offsets).permute(2, 0, 1).unsqueeze(0)


def reflected_indices(start: int, stop: int, length: int, device: torch.device) -> Tensor:
    """Indices ``start..stop-1`` along an axis of ``length``, reflected at its ends like ``F.pad(mode="reflect")``."""
    indices = torch.arange(start, stop, device=device)
    if length == 1:
        return indices.zero_()
    period = 2 * (length - 1)
    indices = indices.remainder(period)
    return torch.where(indices >= length, period - indices, indices)


class ImageLayerNorm(nn.Module):
    """The published "revised LayerNorm": each sample normalised over its channels and positions together.

    The normalised map gets a learnable per-channel weight and bias, as a LayerNorm's. The sample's
    statistics are not thrown away: two 1x1 convs (1 -> ``dim``, linear layers here) turn its std
    and mean into a per-channel rescale and rebias that the block applies to its attention output,
    so the block can put back the scale and offset the normalisation took out.

    The statistics are of the whole map, so a tile of an image is normalised differently from the
    same pixels in the whole image. :class:`WindowAttentionBlock` computes them on the whole map
    before cutting it into strips, so strips stay exact.

    Args:
        dim: Channels.
        eps: Added to the variance before the square root.
    """

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.rescale = nn.Linear(1, dim)
        self.rebias = nn.Linear(1, dim)
        # as published: the rescale starts near 1 and the rebias near 0, so a new block starts near identity
        nn.init.trunc_normal_(self.rescale.weight, std=0.02)
        nn.init.ones_(self.rescale.bias)
        nn.init.trunc_normal_(self.rebias.weight, std=0.02)
        nn.init.zeros_(self.rebias.bias)

    def statistics(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and std of each sample of (B, H, W, C) tokens over H, W and C, each (B, 1, 1, 1), in float32."""
        variance, mean = torch.var_mean(tokens.float(), dim=(1, 2, 3), correction=0, keepdim=True)
        return mean, torch.sqrt(variance + self.eps)

    def forward(self, tokens: Tensor, statistics: tuple[Tensor, Tensor]) -> Tensor:
        """Normalise (B, h, w, C) tokens (the whole map or rows of it) with the whole map's ``statistics``."""
        mean, std = statistics
        return torch.addcmul(self.bias, (tokens - mean) / std, self.weight)

    def modulation(self, statistics: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        """Per-channel rescale and rebias of each sample, each (B, 1, 1, C)."""
        mean, std = statistics
        return self.rescale(std), self.rebias(mean)


class WindowAttentionBlock(nn.Module):
    """Windowed self-attention with a depthwise conv on the values, then an MLP; both residual.

    A shifted block reflect-pads the map by ``shift`` on the top/left (and ``window - shift`` on the
    bottom/right) before cutting windows, so its windows straddle the unshifted block's borders;
    no cyclic roll, so no attention mask is needed.

    Without autograd (inference) the map is processed in horizontal strips of whole windows of
    about ``chunk_pixels`` tokens: every intermediate (norm, queries, keys, values, attention, MLP)
    then exists for one strip at a time, which bounds memory and keeps allocations small enough for
    the allocator to reuse (a fresh 100 MB tensor costs more in page faults than a matrix product
    on it). The depthwise conv reads a halo of rows around each strip, so strips give exactly the
    whole-map result. With autograd the block runs whole: the backward of each strip's gather
    would write a full-size gradient.

    With ``norm="image"`` the block input is normalised with the statistics of the whole map
    (computed before the strips are cut, so strips stay exact) and the attention output is
    rescaled and rebiased from them (:class:`ImageLayerNorm`), as published. The MLP is not
    normalised with either norm (nor in the published model).

    Args:
        dim: Channels.
        heads: Attention heads; ``dim`` must be divisible by it.
        window_size: Side of the square attention window.
        shift: Window offset in pixels (0 for an unshifted block).
        mlp_ratio: Hidden width of the MLP relative to ``dim``.
        value_kernel: Kernel of the depthwise conv on the values, added to the attention output.
        chunk_pixels: Tokens per strip at inference (batch included); results do not depend on it.
        norm: ``pixel`` (LayerNorm over each pixel's channels) or ``image`` (:class:`ImageLayerNorm`).
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        window_size: int,
        shift: int,
        mlp_ratio: float,
        value_kernel: int,
        chunk_pixels: int = 40960,
        norm: BlockNorm = "pixel",
    ) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention dim {dim} is not divisible by heads={heads}")
        if not 0 <= shift < window_size:
            raise ValueError(f"shift {shift} must lie in [0, window_size={window_size})")
        if value_kernel % 2 == 0:
            raise ValueError(f"value_kernel must be odd, got {value_kernel}")
        self.dim, self.heads, self.window_size, self.shift, self.chunk_pixels = (
            dim,
            heads,
            window_size,
            shift,
            chunk_pixels,
        )
        if norm not in ("pixel", "image"):
            raise ValueError(f"block norm must be 'pixel' or 'image', got {norm!r}")
        self.norm = nn.LayerNorm(dim) if norm == "pixel" else ImageLayerNorm(dim)
        self.query_key = nn.Linear(dim, 2 * dim)
        self.value = nn.Linear(dim, dim)
        self.value_conv = nn.Conv2d(dim, dim, value_kernel, groups=dim)  # padded by the strip logic (reflect)
        self.projection = nn.Linear(dim, dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, dim))

    def forward(
        self,
        tokens: Tensor,
        position_bias: Tensor,
        foreign_queries: list[Tensor] | None = None,
        in_strips: bool | None = None,
    ) -> tuple[Tensor, list[Tensor]]:
        """Run the block on (B, H, W, C) tokens.

        Args:
            tokens: Input, H and W multiples of the window.
            position_bias: (1, heads, N, N) additive attention bias.
            foreign_queries: The other branch's windowed queries from the same block position (its
                second return value), used instead of this block's own (cross-fusion gating).
            in_strips: Process in strips of about ``chunk_pixels``; ``None`` means when autograd is
                off. A block given ``foreign_queries`` must use the same setting as the one they came from.

        Returns:
            The output tokens and, per strip, the windowed queries that were used.
        """
        batch, height, width, _ = tokens.shape
        if height % self.window_size or width % self.window_size:
            raise ValueError(
                f"feature map {height}x{width} is not a multiple of the attention window {self.window_size}; "
                "pad the input to GIFNet.size_multiple"
            )
        padding = self.window_size if self.shift else 0
        if in_strips is None:
            in_strips = not torch.is_grad_enabled()
        strip_tokens = self.chunk_pixels if in_strips else batch * (height + padding) * (width + padding)
        strip_rows = self.window_size * max(1, strip_tokens // (batch * (width + padding) * self.window_size))
        # an image-wide norm needs the whole map's statistics before any strip is cut
        statistics = self.norm.statistics(tokens) if isinstance(self.norm, ImageLayerNorm) else None
        outputs, used_queries = [], []
        for index, top in enumerate(range(0, height + padding, strip_rows)):
            bottom = min(top + strip_rows, height + padding)
            foreign = None if foreign_queries is None else foreign_queries[index]
            output, queries = self._strip(tokens, top, bottom, position_bias, foreign, statistics)
            outputs.append(output)
            used_queries.append(queries)
        return torch.cat(outputs, dim=1) if len(outputs) > 1 else outputs[0], used_queries

    def _strip(
        self,
        tokens: Tensor,
        top: int,
        bottom: int,
        position_bias: Tensor,
        foreign_queries: Tensor | None,
        statistics: tuple[Tensor, Tensor] | None,
    ) -> tuple[Tensor, Tensor]:
        """Rows [top, bottom) of the shift-padded map -> the block output on the image rows they cover.

        ``statistics``: the whole map's mean and std with an image-wide norm, ``None`` with a per-pixel one.
        """
        batch, height, width, _ = tokens.shape
        size, shift = self.window_size, self.shift
        halo = self.value_conv.kernel_size[0] // 2
        first, last = max(top - shift, 0), min(bottom - shift, height)  # image rows produced
        row_base, left = top - shift - halo, max(shift, halo)  # image row / column of the first gathered one
        window_width = width + size if shift else width
        rows = reflected_indices(row_base, bottom - shift + halo, height, tokens.device)
        columns = reflected_indices(-left, width + max(window_width - width - shift, halo), width, tokens.device)
        # one gather makes the reflect shift padding of the windows and the conv's halo, rows and columns
        gathered = tokens[:, rows[:, None], columns[None, :]]
        normed = self.norm(gathered) if statistics is None else self.norm(gathered, statistics)
        del gathered
        window_rows, window_columns = slice(halo, halo + bottom - top), slice(left - shift, left - shift + window_width)
        # projections run on the whole contiguous gather (a few halo tokens more) rather than on the
        # strided window slice, which would cost a copy per projection
        if foreign_queries is None:
            query, key = self.query_key(normed).chunk(2, dim=-1)
            queries = self._windows(query[:, window_rows, window_columns])
            del query
        else:  # the other branch's queries replace this block's own, so those are not computed at all
            key = F.linear(normed, self.query_key.weight[self.dim :], self.query_key.bias[self.dim :])
            queries = foreign_queries
        keys = self._windows(key[:, window_rows, window_columns])
        values = self.value(normed)
        del normed, key
        attended = F.scaled_dot_product_attention(
            queries, keys, self._windows(values[:, window_rows, window_columns]), attn_mask=position_bias
        )
        attended = self._merge(attended, batch, bottom - top, window_width)
        attended = attended[:, first - top + shift : last - top + shift, shift : shift + width]
        conv_input = values[:, first - halo - row_base : last + halo - row_base, left - halo : left + width + halo]
        # in float32 even under autocast: oneDNN's bfloat16 depthwise backward is ~6x slower, for a cheap op
        with torch.autocast(tokens.device.type, enabled=False):
            local = F.conv2d(
                to_feature_map(conv_input).float(), self.value_conv.weight, self.value_conv.bias, groups=self.dim
            )
        update = self.projection(attended + to_tokens(local))
        if statistics is not None:
            rescale, rebias = self.norm.modulation(statistics)
            update = torch.addcmul(rebias, update, rescale)
        output = tokens[:, first:last] + update
        return output + self.mlp(output), queries

    def _windows(self, tokens: Tensor) -> Tensor:
        """(B, H, W, C), H and W multiples of the window -> (B * windows, heads, window^2, C / heads)."""
        batch, height, width, channels = tokens.shape
        size, heads = self.window_size, self.heads
        windows = tokens.reshape(batch, height // size, size, width // size, size, heads, channels // heads)
        return windows.permute(0, 1, 3, 5, 2, 4, 6).reshape(-1, heads, size * size, channels // heads)

    def _merge(self, windows: Tensor, batch: int, height: int, width: int) -> Tensor:
        """Inverse of :meth:`_windows`: (B * windows, heads, window^2, C / heads) -> (B, height, width, C)."""
        size, heads = self.window_size, self.heads
        tokens = windows.reshape(batch, height // size, width // size, heads, size, size, -1)
        return tokens.permute(0, 1, 4, 2, 5, 3, 6).reshape(batch, height, width, -1)


class CrossGatedBranches(nn.Module):
    """The IVIF and MFIF task branches, coupled by cross-fusion gating.

    For each sample one branch is *primary* (its output is returned, and it is trained) and the other
    is *secondary* (a helper for this sample). Both branches embed the shared features with
    their own 3x3 conv and run their own attention blocks; block ``i`` of both shares one relative
    position bias MLP. The coupling:

    - in unshifted blocks the secondary branch attends with the primary branch's queries;
    - after each unshifted block the primary branch adds ``gate[primary, i // 2]`` times the
      secondary branch's features.

    A loss on the primary output reaches the secondary branch through the gate and the shared queries,
    as in the published model: a branch that fuses no task itself is trained as the other's helper.
    The secondary branch runs only up to the last unshifted block (later blocks of it are never
    read). The primary output goes through the shared 3x3 un-embedding.

    Args:
        dim: Channels of the shared features and of the branches.
        heads: Attention heads.
        window_size: Side of the square attention window.
        depth: Attention blocks per branch; odd-numbered blocks are shifted by half a window.
        mlp_ratio: MLP hidden width relative to ``dim``.
        value_kernel: Kernel of the depthwise conv on the attention values.
        position_hidden: Hidden width of the relative position bias MLP.
        gate_init: Initial value of the gating scalars (alpha).
        downsample: Run the branches at 1/downsample resolution (average-pooled in, bilinear
            upsampled out); 1 keeps full resolution.
        chunk_pixels: Pixels (batch included) per horizontal strip at inference, in the embedding,
            attention blocks and un-embedding (bounds memory; no effect on results).
        norm: Block normalisation, ``pixel`` or ``image`` (:data:`BlockNorm`).
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        window_size: int,
        depth: int,
        mlp_ratio: float,
        value_kernel: int,
        position_hidden: int,
        gate_init: float,
        downsample: int,
        chunk_pixels: int,
        norm: BlockNorm = "pixel",
    ) -> None:
        super().__init__()
        if depth < 1 or downsample < 1:
            raise ValueError(f"branch depth ({depth}) and downsample ({downsample}) must be at least 1")
        self.depth, self.downsample, self.chunk_pixels = depth, downsample, chunk_pixels
        self.embed = nn.ModuleList(conv3x3(dim, dim) for _ in BRANCHES)
        self.blocks = nn.ModuleList(
            nn.ModuleList(
                WindowAttentionBlock(
                    dim,
                    heads,
                    window_size,
                    0 if index % 2 == 0 else window_size // 2,
                    mlp_ratio,
                    value_kernel,
                    chunk_pixels,
                    norm,
                )
                for index in range(depth)
            )
            for _ in BRANCHES
        )
        self.position_biases = nn.ModuleList(
            RelativePositionBias(window_size, heads, position_hidden) for _ in range(depth)
        )
        self.gates = nn.Parameter(torch.full((len(BRANCHES), (depth + 1) // 2), float(gate_init)))
        self.unembed = conv3x3(dim, dim)
        # the secondary branch is read after unshifted blocks only: the last one is the last even index
        self.secondary_depth = 2 * ((depth - 1) // 2) + 1

    def forward(self, features: Tensor, primary: int) -> Tensor:
        """(B, dim, H, W) shared features -> (B, dim, H, W) features of the ``primary`` branch."""
        if primary not in (IVIF_BRANCH, MFIF_BRANCH):
            raise ValueError(f"primary branch must be {IVIF_BRANCH} (ivif) or {MFIF_BRANCH} (mfif), got {primary}")
        secondary = 1 - primary
        if self.downsample > 1:
            features = F.avg_pool2d(features, self.downsample)
        tokens = to_tokens(in_row_strips(self.embed[primary], [features], 1, self.chunk_pixels))
        helper = to_tokens(in_row_strips(self.embed[secondary], [features], 1, self.chunk_pixels))
        in_strips = not torch.is_grad_enabled()  # the secondary branch must cut the primary's strips
        for index in range(self.depth):
            bias = self.position_biases[index]()
            tokens, queries = self.blocks[primary][index](tokens, bias, in_strips=in_strips)
            if index < self.secondary_depth:
                shared_queries = queries if index % 2 == 0 else None
                helper, _ = self.blocks[secondary][index](
                    helper, bias, foreign_queries=shared_queries, in_strips=in_strips
                )
            if index % 2 == 0:
                tokens = torch.addcmul(tokens, self.gates[primary, index // 2], helper)
        output = in_row_strips(self.unembed, [to_feature_map(tokens)], 1, self.chunk_pixels)
        if self.downsample > 1:
            output = F.interpolate(output, scale_factor=self.downsample, mode="bilinear", align_corners=False)
        return output


class FusionDecoder(nn.Module):
    """The global decoder: concat(shared, branch features) -> 1x1 convs -> 3x3 convs -> 1 channel in [0, 1].

    ReLU between the 1x1 convs but not after the last one, whose output the first 3x3 conv reads
    directly (as published); ReLU after each hidden 3x3 conv.

    The 1x1 convs run as linear layers on channels-last tokens (CPU 1x1 convs take a slow im2col
    path), and the first is split over its two inputs so the concatenation is never materialised.

    Args:
        dim: Channels of each of the two inputs.
        pointwise_channels: Widths of the 1x1 convs (at least one).
        conv_channels: Hidden widths of the 3x3 convs before the last one.
    """

    def __init__(self, dim: int, pointwise_channels: tuple[int, ...], conv_channels: tuple[int, ...]) -> None:
        super().__init__()
        if not pointwise_channels:
            raise ValueError("the global decoder needs at least one 1x1 conv (decoder_pointwise_channels)")
        widths = (2 * dim, *pointwise_channels)
        self.dim = dim
        self.pointwise = nn.ModuleList(
            nn.Linear(widths[index], widths[index + 1], bias=False) for index in range(len(pointwise_channels))
        )
        self.convs = conv_decoder(widths[-1], conv_channels)

    def forward(self, features: Tensor, branch_features: Tensor) -> Tensor:
        shared_weight, branch_weight = self.pointwise[0].weight.split(self.dim, dim=1)
        hidden = F.linear(to_tokens(features), shared_weight) + F.linear(to_tokens(branch_features), branch_weight)
        for layer in self.pointwise[1:]:
            hidden = layer(F.relu(hidden, inplace=True))
        return (torch.tanh(self.convs(to_feature_map(hidden))) + 1.0) / 2.0


class GIFNet(nn.Module):
    """The GIFNet network: shared encoder, reconstruction decoder, gated task branches, global decoder.

    Args:
        source_channels: Channels of each source (1: luminance).
        encoder_growth: Output channels of each dense encoder layer.
        encoder_layers: Dense encoder layers; the shared features have
            ``2 * source_channels + encoder_layers * encoder_growth`` channels (98 by default).
        reconstruction_channels: Hidden widths of the reconstruction decoder's 3x3 convs.
        heads: Attention heads in the task branches.
        window_size: Side of the square attention window.
        branch_depth: Attention blocks per task branch (odd blocks shifted by half a window).
        mlp_ratio: MLP hidden width relative to the feature channels.
        value_kernel: Kernel of the depthwise conv on the attention values.
        position_hidden: Hidden width of the relative position bias MLP.
        gate_init: Initial value of the cross-fusion gating scalars.
        branch_downsample: Run the task branches at 1/branch_downsample resolution (1 = full, as
            published; 2 or 4 for speed).
        decoder_pointwise_channels: Widths of the global decoder's 1x1 convs (ReLU between them).
        decoder_channels: Hidden widths of the global decoder's 3x3 convs before the last one.
        inference_chunk_pixels: Pixels (batch included) per horizontal strip at inference: every
            stage runs strip by strip, which bounds the memory of large images and keeps them fast;
            results do not depend on it.
        norm: Attention-block normalisation: ``pixel`` (LayerNorm per pixel: a tile fuses like the
            same pixels of the whole image) or ``image`` (the published revised LayerNorm over each
            image: what the published weights need; tiles then change the result, strips do not).
    """

    def __init__(
        self,
        source_channels: int = 1,
        encoder_growth: int = 32,
        encoder_layers: int = 3,
        reconstruction_channels: tuple[int, ...] = (64, 32, 16),
        heads: int = 2,
        window_size: int = 8,
        branch_depth: int = 2,
        mlp_ratio: float = 2.0,
        value_kernel: int = 5,
        position_hidden: int = 256,
        gate_init: float = 0.5,
        branch_downsample: int = 1,
        decoder_pointwise_channels: tuple[int, ...] = (98, 128),
        decoder_channels: tuple[int, ...] = (64, 32, 16),
        inference_chunk_pixels: int = 40960,
        norm: BlockNorm = "pixel",
    ) -> None:
        super().__init__()
        self.window_size, self.branch_downsample, self.norm = window_size, branch_downsample, norm
        self.inference_chunk_pixels = inference_chunk_pixels
        self.encoder = DenseEncoder(2 * source_channels, encoder_growth, encoder_layers)
        dim = self.encoder.out_channels
        self.reconstruction_decoder = conv_decoder(dim, tuple(reconstruction_channels))
        self.branches = CrossGatedBranches(
            dim,
            heads,
            window_size,
            branch_depth,
            mlp_ratio,
            value_kernel,
            position_hidden,
            gate_init,
            branch_downsample,
            inference_chunk_pixels,
            norm,
        )
        self.fusion_decoder = FusionDecoder(dim, tuple(decoder_pointwise_channels), tuple(decoder_channels))

    @property
    def size_multiple(self) -> int:
        """Height and width of the inputs must be multiples of this (window x branch downsampling)."""
        return self.window_size * self.branch_downsample

    def encode(self, a: Tensor, b: Tensor) -> Tensor:
        """(B, C, H, W) sources -> (B, dim, H, W) shared features, in channels-last memory format."""
        if a.shape != b.shape:
            raise ValueError(f"sources must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
        height, width = a.shape[-2:]
        if height % self.size_multiple or width % self.size_multiple:
            raise ValueError(
                f"input {height}x{width} is not a multiple of size_multiple={self.size_multiple}; "
                "reflect-pad it first (lightning_modules.inference.tiling.fuse_padded does)"
            )
        # channels-last makes every conv of the network about 3x faster on CPU (oneDNN's native layout)
        stacked = torch.cat([a, b], dim=1).contiguous(memory_format=torch.channels_last)
        return in_row_strips(self.encoder, [stacked], receptive_radius(self.encoder), self.inference_chunk_pixels)

    def reconstruct(self, features: Tensor) -> Tensor:
        """Shared features -> reconstruction of the second source, (B, 1, H, W) in [0, 1]."""
        decoder = self.reconstruction_decoder
        return torch.sigmoid(in_row_strips(decoder, [features], receptive_radius(decoder), self.inference_chunk_pixels))

    def fuse_features(
        self, features: Tensor, branch: Tensor | int = MFIF_BRANCH, branch_sizes: Sequence[int] | None = None
    ) -> Tensor:
        """Shared features -> fused image (B, 1, H, W) in [0, 1], each sample through its ``branch``.

        Args:
            features: Output of :meth:`encode`.
            branch: The primary branch per sample ((B,) int tensor of :data:`IVIF_BRANCH` /
                :data:`MFIF_BRANCH`), or one index for the whole batch.
            branch_sizes: With a per-sample ``branch``, how many samples take each branch (in
                :data:`BRANCHES` order) when the caller knows it on the host (the training step does,
                from the batch's metadata); otherwise it is read from ``branch``, which on a GPU makes
                the host wait for the device.
        """
        if isinstance(branch, int):
            branch_features = self.branches(features, branch)
        else:
            if branch_sizes is None:
                branch_sizes = torch.bincount(branch, minlength=len(BRANCHES)).tolist()
            groups = [index for index, size in enumerate(branch_sizes) if size]
            if len(groups) == 1:
                branch_features = self.branches(features, groups[0])
            else:
                branch_features = torch.empty_like(features)
                for index in groups:
                    # samples are grouped by primary branch: one pass per group, no per-sample loop
                    members = true_indices(branch == index, branch_sizes[index])
                    branch_features = branch_features.index_copy(0, members, self.branches(features[members], index))
        decoder = self.fusion_decoder
        return in_row_strips(
            decoder, [features, branch_features], receptive_radius(decoder), self.inference_chunk_pixels
        )

    def forward(self, a: Tensor, b: Tensor, branch: Tensor | int = MFIF_BRANCH) -> Tensor:
        """Fuse two (B, 1, H, W) sources in [0, 1]; H and W multiples of :attr:`size_multiple`."""
        return self.fuse_features(self.encode(a, b), branch)
