"""The UP-Fusion network: a Restormer-style U-Net on luminance with SCPM, GAM and TCPM.

Our implementation of the published design (AAAI 2026), at its published sizes by default (width
48, 4/6/6/8 transformer blocks and 1/2/4/8 heads per level, gated feed-forward expansion 2.66,
transposed (channel) attention). Shapes: sources are (B, 1, H, W) luminance in [0, 1], H and W
multiples of :attr:`UPFusionNet.size_multiple`.

- Shallow encoders: one 3x3 embedding per source (``a``: infrared, near focus, under-exposed, MRI,
  NIR; ``b``: visible, far focus, over-exposed, CT/PET/SPECT).
- :class:`SemanticChannelPruning` (SCPM) on the joint embedding (both sources' channels side by
  side): channel scores from a squeeze-and-excitation MLP plus a projection of the features a
  frozen pretrained image model computed for the two sources select the best channels, re-weight
  them and expand them back; the result is split into one stream per source.
- :class:`GeometricAffineModulation` (GAM): each stream is modulated ``f * (1 + gamma) + beta`` with
  gamma and beta from the pooled shallow embedding of its own source, so the streams stay tied to
  their modality after the joint pruning.
- Encoder: per source, transformer stages at 1, 1/2, 1/4 and 1/8 resolution; the downsampling
  between levels is shared by the two sources.
- :class:`TextChannelPerturbation` (TCPM) at the latent and at every skip level: the prompt scores
  the concatenated channels of the two sources; the best-scoring half, in score order and weighted
  by their scores, forms the query of a transposed cross-attention over the plain joint features,
  so which source's channels lead depends on the task and degradation named in the prompt.
- Decoder as Restormer's (upsample, concatenate the TCPM skip, reduce, transformer stage; full
  resolution at twice the width), refinement blocks, and a 3x3 output convolution added to the
  mean of the two sources. The output convolution starts at zero, so an untrained network returns
  the pixel average and training learns the correction.

**Differentiable selection.** The public code picks channels with top-k indices only, so no
gradient reaches its scorers. Here the selected channels are multiplied by a gate ``2 sigmoid(s)``
of their score ``s`` (1 at a score of 0): which channels are kept and their order are a hard
top-k, and their weights are soft, so every scorer (the SE MLP, the image-feature projection, the
text projection) is trained through the gates of the channels it selected (a score-weighted
selection; the unselected channels get no gradient in that step, as in a straight-through
estimator's forward pass).

The squeeze-and-excitation scores, the image model's features and GAM pool over the whole input,
so a tile fused on its own (predict with tiling) sees its own statistics, not the full image's.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_modules.networks.layers import ChannelNorm, conv3x3, zero_initialised


def score_weighted_selection(features: Tensor, scores: Tensor, keep: int) -> Tensor:
    """The ``keep`` best-scoring channels of ``features`` (B, C, H, W), best first, each times ``2 sigmoid(score)``.

    ``scores`` is (B, C). The choice and the order are hard (top-k); the gates carry the gradient
    to whatever computed the scores.
    """
    top = scores.topk(keep, dim=1)
    gates = 2.0 * torch.sigmoid(top.values)
    index = top.indices[:, :, None, None].expand(-1, -1, *features.shape[-2:])
    return features.gather(1, index) * gates[:, :, None, None]


def depthwise3x3(channels: int) -> nn.Conv2d:
    """A depthwise 3x3 convolution (zero padding, no bias), the local mixing of Restormer's layers."""
    return nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False)


class TransposedAttention(nn.Module):
    """Multi-head attention across channels (Restormer's MDTA): cost linear in the pixel count.

    Queries come from ``x``, keys and values from ``context`` (``x`` itself when omitted); each is
    a 1x1 then a depthwise 3x3 projection. Per head, the channel-by-channel attention map is the
    cosine similarity of L2-normalised query and key channels times a learned temperature.

    Args:
        channels: Feature channels (divisible by ``heads``).
        heads: Attention heads.
    """

    def __init__(self, channels: int, heads: int) -> None:
        super().__init__()
        if channels % heads:
            raise ValueError(f"transposed attention: channels ({channels}) must be divisible by heads ({heads})")
        self.heads = heads
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.query = nn.Sequential(nn.Conv2d(channels, channels, 1, bias=False), depthwise3x3(channels))
        self.key_value = nn.Sequential(nn.Conv2d(channels, 2 * channels, 1, bias=False), depthwise3x3(2 * channels))
        self.out = nn.Conv2d(channels, channels, 1, bias=False)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        batch, channels, height, width = x.shape
        key, value = self.key_value(x if context is None else context).chunk(2, dim=1)

        def heads(features: Tensor) -> Tensor:
            return features.reshape(batch, self.heads, channels // self.heads, height * width)

        query = F.normalize(heads(self.query(x)), dim=-1)
        key = F.normalize(heads(key), dim=-1)
        attention = (query @ key.transpose(-1, -2) * self.temperature).softmax(dim=-1)
        return self.out((attention @ heads(value)).reshape(batch, channels, height, width))


class GatedFeedForward(nn.Module):
    """Restormer's gated depthwise feed-forward network: 1x1 up, depthwise 3x3, GELU gate, 1x1 down."""

    def __init__(self, channels: int, expansion: float) -> None:
        super().__init__()
        hidden = int(channels * expansion)
        self.inner = nn.Sequential(nn.Conv2d(channels, 2 * hidden, 1, bias=False), depthwise3x3(2 * hidden))
        self.out = nn.Conv2d(hidden, channels, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate, value = self.inner(x).chunk(2, dim=1)
        return self.out(F.gelu(gate) * value)


class TransformerBlock(nn.Module):
    """Pre-norm residual block: transposed self-attention, then the gated feed-forward network."""

    def __init__(self, channels: int, heads: int, expansion: float) -> None:
        super().__init__()
        self.attention_norm = ChannelNorm(channels)
        self.attention = TransposedAttention(channels, heads)
        self.feed_forward_norm = ChannelNorm(channels)
        self.feed_forward = GatedFeedForward(channels, expansion)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attention(self.attention_norm(x))
        return x + self.feed_forward(self.feed_forward_norm(x))


def transformer_stage(channels: int, heads: int, blocks: int, expansion: float) -> nn.Sequential:
    return nn.Sequential(*(TransformerBlock(channels, heads, expansion) for _ in range(blocks)))


def downsample(channels: int) -> nn.Sequential:
    """Half the resolution, twice the channels: 3x3 convolution to C/2, then 2x2 pixel unshuffle."""
    return nn.Sequential(nn.Conv2d(channels, channels // 2, 3, padding=1, bias=False), nn.PixelUnshuffle(2))


def upsample(channels: int) -> nn.Sequential:
    """Twice the resolution, half the channels: 3x3 convolution to 2C, then 2x2 pixel shuffle."""
    return nn.Sequential(nn.Conv2d(channels, 2 * channels, 3, padding=1, bias=False), nn.PixelShuffle(2))


class SemanticChannelPruning(nn.Module):
    """SCPM: keep and re-weight the joint embedding's best channels, scored by SE and a pretrained image model.

    Args:
        channels: Channels of the joint embedding.
        image_feature_dim: Width of the image model's features of both sources together.
        keep_ratio: Fraction of the channels kept.
        reduction: Squeeze-and-excitation bottleneck ratio.
    """

    def __init__(self, channels: int, image_feature_dim: int, keep_ratio: float, reduction: int = 8) -> None:
        super().__init__()
        self.keep = max(1, round(channels * keep_ratio))
        hidden = max(1, channels // reduction)
        self.excitation = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(), nn.Linear(hidden, channels))
        self.semantic = nn.Linear(image_feature_dim, channels)
        self.expand = nn.Conv2d(self.keep, channels, 1, bias=False)

    def channel_scores(self, joint: Tensor, image_features: Tensor) -> Tensor:
        return self.excitation(joint.mean(dim=(2, 3))) + self.semantic(image_features)

    def forward(self, joint: Tensor, image_features: Tensor) -> Tensor:
        return self.expand(score_weighted_selection(joint, self.channel_scores(joint, image_features), self.keep))


class GeometricAffineModulation(nn.Module):
    """GAM: ``f * (1 + gamma) + beta``, gamma and beta from the pooled features of the stream's own source.

    The last layer starts at zero, so the modulation starts as the identity.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        last = nn.Linear(channels, 2 * channels)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.affine = nn.Sequential(nn.Linear(channels, channels), nn.ReLU(), last)

    def forward(self, features: Tensor, guide: Tensor) -> Tensor:
        gamma, beta = self.affine(guide.mean(dim=(2, 3))).chunk(2, dim=1)
        return features * (1 + gamma[:, :, None, None]) + beta[:, :, None, None]


class TextChannelPerturbation(nn.Module):
    """TCPM: the prompt reorders and selects the two sources' concatenated channels before channel attention.

    The text projection scores the 2C concatenated channels; the best ``keep_ratio`` of them, best
    first and gated by their scores (:func:`score_weighted_selection`), are mixed into C query
    channels, which attend (transposed cross-attention) to the plain joint features reduced to C.
    A gated feed-forward network follows; both are residual on the joint features.

    Args:
        channels: Channels of each source's features (C).
        text_dim: Width of the prompt's pooled embedding.
        heads: Attention heads.
        expansion: Feed-forward expansion.
        keep_ratio: Fraction of the 2C channels the prompt keeps.
    """

    def __init__(self, channels: int, text_dim: int, heads: int, expansion: float, keep_ratio: float) -> None:
        super().__init__()
        self.keep = max(1, round(2 * channels * keep_ratio))
        self.text_scores = nn.Sequential(nn.Linear(text_dim, text_dim), nn.ReLU(), nn.Linear(text_dim, 2 * channels))
        self.query_mix = nn.Conv2d(self.keep, channels, 1, bias=False)
        self.joint_reduce = nn.Conv2d(2 * channels, channels, 1, bias=False)
        self.query_norm = ChannelNorm(channels)
        self.context_norm = ChannelNorm(channels)
        self.attention = TransposedAttention(channels, heads)
        self.feed_forward_norm = ChannelNorm(channels)
        self.feed_forward = GatedFeedForward(channels, expansion)

    def forward(self, features_a: Tensor, features_b: Tensor, text: Tensor) -> Tensor:
        concatenated = torch.cat([features_a, features_b], dim=1)
        query = self.query_mix(score_weighted_selection(concatenated, self.text_scores(text), self.keep))
        joint = self.joint_reduce(concatenated)
        fused = joint + self.attention(self.query_norm(query), self.context_norm(joint))
        return fused + self.feed_forward(self.feed_forward_norm(fused))


class UPFusionNet(nn.Module):
    """UP-Fusion: two sources' luminance, a prompt embedding and image-model features -> fused luminance.

    Args:
        text_dim: Width of the prompt encoder's pooled embedding.
        image_feature_dim: Width of the pretrained image model's feature vector of one source.
        width: Channels at full resolution (doubled at each of the three lower levels).
        blocks: Transformer blocks per level, full resolution first (the latent last).
        heads: Attention heads per level.
        expansion: Feed-forward expansion of every transformer block.
        refinement_blocks: Transformer blocks after the decoder, at full resolution.
        prune_keep_ratio: Fraction of the joint embedding's channels SCPM keeps.
        perturb_keep_ratio: Fraction of the concatenated channels each TCPM keeps.
    """

    size_multiple = 8
    """Three 2x downsamplings."""

    def __init__(
        self,
        text_dim: int,
        image_feature_dim: int,
        width: int = 48,
        blocks: Sequence[int] = (4, 6, 6, 8),
        heads: Sequence[int] = (1, 2, 4, 8),
        expansion: float = 2.66,
        refinement_blocks: int = 4,
        prune_keep_ratio: float = 0.7,
        perturb_keep_ratio: float = 0.5,
    ) -> None:
        super().__init__()
        if len(blocks) != 4 or len(heads) != 4:
            raise ValueError(f"blocks and heads need one entry per level (4), got {list(blocks)} and {list(heads)}")
        widths = [width * 2**level for level in range(4)]
        self.embed_a = conv3x3(1, width)
        self.embed_b = conv3x3(1, width)
        self.prune = SemanticChannelPruning(2 * width, 2 * image_feature_dim, prune_keep_ratio)
        self.modulate_a = GeometricAffineModulation(width)
        self.modulate_b = GeometricAffineModulation(width)
        self.encoder_a = nn.ModuleList(transformer_stage(c, h, n, expansion) for c, h, n in zip(widths, heads, blocks))
        self.encoder_b = nn.ModuleList(transformer_stage(c, h, n, expansion) for c, h, n in zip(widths, heads, blocks))
        self.down = nn.ModuleList(downsample(c) for c in widths[:3])  # shared by both sources
        self.perturb = nn.ModuleList(
            TextChannelPerturbation(c, text_dim, h, expansion, perturb_keep_ratio) for c, h in zip(widths, heads)
        )
        # decoder levels 1/4, 1/2, 1 (Restormer keeps twice the width at full resolution, with no reduction)
        self.up = nn.ModuleList(upsample(c) for c in reversed(widths[1:]))
        self.reduce = nn.ModuleList(nn.Conv2d(2 * c, c, 1, bias=False) for c in (widths[2], widths[1]))
        decoder_widths = (widths[2], widths[1], 2 * width)
        self.decoder = nn.ModuleList(
            transformer_stage(c, h, n, expansion) for c, h, n in zip(decoder_widths, heads[2::-1], blocks[2::-1])
        )
        self.refinement = transformer_stage(2 * width, heads[0], refinement_blocks, expansion)
        self.output = zero_initialised(conv3x3(2 * width, 1))

    def forward(self, a: Tensor, b: Tensor, text: Tensor, image_features: Tensor) -> Tensor:
        """Fused luminance (B, 1, H, W) from ``a``, ``b``, the prompts' pooled embeddings (B, text_dim)
        and the image model's features of ``a`` and ``b`` concatenated (B, 2 image_feature_dim)."""
        shallow_a, shallow_b = self.embed_a(a), self.embed_b(b)
        joint = self.prune(torch.cat([shallow_a, shallow_b], dim=1), image_features)
        stream_a, stream_b = joint.chunk(2, dim=1)
        stream_a, stream_b = self.modulate_a(stream_a, shallow_a), self.modulate_b(stream_b, shallow_b)
        skips = []
        for level, (stage_a, stage_b) in enumerate(zip(self.encoder_a, self.encoder_b)):
            if level:
                stream_a, stream_b = self.down[level - 1](stream_a), self.down[level - 1](stream_b)
            stream_a, stream_b = stage_a(stream_a), stage_b(stream_b)
            skips.append(self.perturb[level](stream_a, stream_b, text))
        features = skips.pop()  # the fused latent
        for level, (up, stage) in enumerate(zip(self.up, self.decoder)):
            features = torch.cat([up(features), skips.pop()], dim=1)
            if level < len(self.reduce):
                features = self.reduce[level](features)
            features = stage(features)
        return 0.5 * (a + b) + self.output(self.refinement(features))
