"""The CMI-Fusion network: dual-attention features per source, image-text interaction, a conv decoder.

CMI-Fusion (Li, Song, Gao et al., Signal Processing 2025) guides fusion with CLIP text: a fixed
prompt describing each source modality and one describing the wanted fused image. Our design from
the paper's stated structure (its public code is an incomplete inference stub; the published
sizes below follow that stub's constructor arguments):

- :class:`DualAttentionFeatureExtractor` (DAFE), one per source: a lifting convolution pair, then
  two convolutions whose output feeds a spatial-attention branch (a gate from each pixel's channel
  mean and maximum) and a channel-attention branch (squeeze-and-excitation); both branches are
  concatenated and reduced by a 1x1 convolution.
- :class:`ImageTextInteraction` (ITI): every pixel of each source's features is a token that
  attends to the token sequence of its modality prompt (the text tower's per-token outputs, not
  only the pooled vector: one key per prompt would make the softmax trivial); the two sources'
  tokens are summed, widened, and attend to the fusion prompt in ``fusion_depth`` blocks.
- :class:`FusionDecoder`: residual blocks at the interaction width, then convolutions narrowing to
  one channel, added to the mean of the two sources (no output activation; the fusion base clamps
  at predict). The paper's decoder outputs the image itself; ours starts from the pixel average
  (its last convolution is zero at initialisation), so a short training budget only has to learn
  the correction, and a restoration sample (``b = a``) starts as the identity.

Shapes: sources are (B, 1, H, W) luminance in [0, 1], any H and W (nothing downsamples). The
channel attention pools over the whole image, so a tile fuses slightly differently from the same
region inside the whole image.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lightning_modules.networks.layers import (
    ChannelNorm,
    ResidualBlock,
    conv3x3,
    in_row_strips,
    receptive_radius,
    zero_initialised,
)
from lightning_modules.text import PromptEmbeddings


class SpatialAttention(nn.Module):
    """Gates every pixel by a sigmoid of a convolution over its channel mean and channel maximum."""

    def __init__(self, kernel_size: int = 5) -> None:
        super().__init__()
        self.gate = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, padding_mode="reflect")

    def forward(self, features: Tensor) -> Tensor:
        summary = torch.cat([features.mean(dim=1, keepdim=True), features.amax(dim=1, keepdim=True)], dim=1)
        return features * torch.sigmoid(self.gate(summary))


class ChannelAttention(nn.Module):
    """Squeeze-and-excitation: channel weights from the image-wide mean of each channel."""

    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.excite = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(), nn.Linear(hidden, channels), nn.Sigmoid())

    def forward(self, features: Tensor) -> Tensor:
        return features * self.excite(features.mean(dim=(2, 3)))[:, :, None, None]


class DualAttentionFeatureExtractor(nn.Module):
    """DAFE: luminance -> (B, channels, H, W) features through spatial and channel attention.

    Args:
        channels: Feature channels.
        reduction: Bottleneck ratio of the channel attention.
        spatial_kernel: Kernel side of the spatial attention's gate.
    """

    def __init__(self, channels: int, reduction: int = 8, spatial_kernel: int = 5) -> None:
        super().__init__()
        self.lift = nn.Sequential(conv3x3(1, channels), nn.PReLU(channels), conv3x3(channels, channels))
        self.body = nn.Sequential(conv3x3(channels, channels), nn.PReLU(channels), conv3x3(channels, channels))
        self.spatial = SpatialAttention(spatial_kernel)
        self.channel = ChannelAttention(channels, reduction)
        self.reduce = nn.Conv2d(2 * channels, channels, 1)

    def forward(self, image: Tensor) -> Tensor:
        features = self.body(self.lift(image))
        return self.reduce(torch.cat([self.spatial(features), self.channel(features)], dim=1))


class PromptCrossAttention(nn.Module):
    """A pre-norm block on (B, N, dim) tokens: cross-attention to a prompt's tokens, then a token MLP.

    Args:
        dim: Width of the image tokens.
        token_dim: Width of the prompt's token embeddings.
        heads: Attention heads (must divide ``dim``).
        mlp_ratio: Hidden width of the MLP relative to ``dim``.
    """

    def __init__(self, dim: int, token_dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"ITI: the token width ({dim}) must be divisible by the attention heads ({heads})")
        self.heads = heads
        self.attention_norm = nn.LayerNorm(dim)
        self.query = nn.Linear(dim, dim)
        self.key_value = nn.Linear(token_dim, 2 * dim)
        self.out = nn.Linear(dim, dim)
        hidden = int(dim * mlp_ratio)
        self.mlp_norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, tokens: Tensor, text: PromptEmbeddings) -> Tensor:
        batch, count, dim = tokens.shape
        head_dim = dim // self.heads
        query = self.query(self.attention_norm(tokens)).reshape(batch, count, self.heads, head_dim).transpose(1, 2)
        key, value = self.key_value(text.tokens).reshape(batch, -1, 2, self.heads, head_dim).permute(2, 0, 3, 1, 4)
        # padded prompt positions are masked out; every prompt has at least its start and end tokens
        mask = text.token_mask[:, None, None, :]
        attended = nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=mask)
        tokens = tokens + self.out(attended.transpose(1, 2).reshape(batch, count, dim))
        return tokens + self.mlp(self.mlp_norm(tokens))


class ImageTextInteraction(nn.Module):
    """ITI: source features attend to their modality prompts, their sum to the fusion prompt.

    Args:
        channels: Width of the DAFE features (the modality stage runs at this width).
        fusion_dim: Width of the fusion stage's tokens.
        token_dim: Width of the prompt's token embeddings.
        heads: Attention heads of every block.
        mlp_ratio: Hidden width of every block's MLP relative to its token width.
        fusion_depth: Blocks attending to the fusion prompt.
    """

    def __init__(
        self, channels: int, fusion_dim: int, token_dim: int, heads: int, mlp_ratio: float, fusion_depth: int
    ) -> None:
        super().__init__()
        if fusion_depth < 1:
            raise ValueError(f"fusion_depth must be at least 1, got {fusion_depth}")
        self.attend_a = PromptCrossAttention(channels, token_dim, heads, mlp_ratio)
        self.attend_b = PromptCrossAttention(channels, token_dim, heads, mlp_ratio)
        self.widen = nn.Linear(channels, fusion_dim)
        self.attend_fused = nn.ModuleList(
            PromptCrossAttention(fusion_dim, token_dim, heads, mlp_ratio) for _ in range(fusion_depth)
        )
        self.norm = nn.LayerNorm(fusion_dim)

    def forward(
        self,
        features_a: Tensor,
        features_b: Tensor,
        text_a: PromptEmbeddings,
        text_b: PromptEmbeddings,
        text_fused: PromptEmbeddings,
    ) -> Tensor:
        """(B, channels, H, W) features of both sources -> (B, fusion_dim, H, W)."""
        batch, _, height, width = features_a.shape
        # every pixel is a token: (B, C, H, W) -> (B, H*W, C)
        tokens_a, tokens_b = (features.flatten(2).transpose(1, 2) for features in (features_a, features_b))
        tokens = self.widen(self.attend_a(tokens_a, text_a) + self.attend_b(tokens_b, text_b))
        for block in self.attend_fused:
            tokens = block(tokens, text_fused)
        return self.norm(tokens).transpose(1, 2).reshape(batch, -1, height, width)


class FusionDecoder(nn.Module):
    """Interaction features -> a luminance correction: residual blocks, then narrowing convolutions.

    The last convolution starts at zero (see :class:`CMIFusionNet`).

    Args:
        in_channels: Width of the interaction features.
        residual_blocks: Residual blocks at that width.
        channels: Widths of the narrowing 3x3 convolutions (each followed by a per-pixel channel
            norm and GELU); a last 3x3 convolution maps the final width to one channel.
    """

    def __init__(self, in_channels: int, residual_blocks: int, channels: tuple[int, ...]) -> None:
        super().__init__()
        layers: list[nn.Module] = [ResidualBlock(in_channels) for _ in range(residual_blocks)]
        width = in_channels
        for narrower in channels:
            layers += [conv3x3(width, narrower), ChannelNorm(narrower), nn.GELU()]
            width = narrower
        layers.append(zero_initialised(conv3x3(width, 1)))
        self.layers = nn.Sequential(*layers)

    def forward(self, features: Tensor) -> Tensor:
        return self.layers(features)


class CMIFusionNet(nn.Module):
    """DAFE per source, ITI with three prompts, conv decoder.

    Args:
        channels: DAFE feature width (also the width of the modality stage of ITI).
        fusion_dim: Token width of ITI's fusion stage and of the decoder's residual blocks.
        token_dim: Width of the prompt encoder's token embeddings.
        heads: Attention heads of every ITI block.
        mlp_ratio: MLP hidden width of every ITI block relative to its token width.
        fusion_depth: ITI blocks attending to the fusion prompt.
        decoder_residual_blocks: Residual blocks at the start of the decoder.
        decoder_channels: Widths of the decoder's narrowing convolutions.
        attention_reduction: Bottleneck ratio of DAFE's channel attention.
        spatial_kernel: Kernel side of DAFE's spatial attention gate.
    """

    size_multiple = 1
    """Nothing downsamples: any size fuses as it is."""

    def __init__(
        self,
        channels: int,
        fusion_dim: int,
        token_dim: int,
        heads: int,
        mlp_ratio: float,
        fusion_depth: int,
        decoder_residual_blocks: int,
        decoder_channels: tuple[int, ...],
        attention_reduction: int = 8,
        spatial_kernel: int = 5,
    ) -> None:
        super().__init__()
        self.extract_a = DualAttentionFeatureExtractor(channels, attention_reduction, spatial_kernel)
        self.extract_b = DualAttentionFeatureExtractor(channels, attention_reduction, spatial_kernel)
        self.interaction = ImageTextInteraction(channels, fusion_dim, token_dim, heads, mlp_ratio, fusion_depth)
        self.decoder = FusionDecoder(fusion_dim, decoder_residual_blocks, tuple(decoder_channels))

    def forward(
        self,
        a: Tensor,
        b: Tensor,
        text_a: PromptEmbeddings,
        text_b: PromptEmbeddings,
        text_fused: PromptEmbeddings,
        chunk_pixels: int | None = None,
    ) -> Tensor:
        """Fused luminance (B, 1, H, W) of sources ``a`` and ``b`` described by the three prompts.

        With ``chunk_pixels`` (and autograd off) the interaction and the decoder run in horizontal
        strips of about that many pixels, each with the decoder's receptive radius of real rows
        around it: the result is the same, and memory is bounded by the strip instead of the image
        (the interaction's tokens and the decoder's first maps are ``fusion_dim`` wide: 512 at the
        published size). DAFE runs whole, since its channel attention pools over the whole image.
        """
        features_a, features_b = self.extract_a(a), self.extract_b(b)

        def interact_and_decode(strip_a: Tensor, strip_b: Tensor) -> Tensor:
            # the interaction acts on each pixel alone, so only the decoder needs rows around a strip
            return self.decoder(self.interaction(strip_a, strip_b, text_a, text_b, text_fused))

        if chunk_pixels is None:
            correction = interact_and_decode(features_a, features_b)
        else:
            halo = receptive_radius(self.decoder)
            correction = in_row_strips(interact_and_decode, [features_a, features_b], halo, chunk_pixels)
        return 0.5 * (a + b) + correction
