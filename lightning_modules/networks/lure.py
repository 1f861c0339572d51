"""The LURE network: a text-guided encoder into a unified latent space, fusion rules inside it, a decoder.

Shapes: sources are (B, 1, H, W) luminance in [0, 1] with H and W multiples of
:attr:`LURENet.size_multiple`; the latent is (B, C, H/2, W/2), reached by a lossless pixel
unshuffle, so fine detail survives.

- :class:`LatentEncoder`: a small U-shaped network (1/2, 1/4 and 1/8 resolution, skips inside the
  encoder only) whose lower levels are text-guided. Its output is the latent: degraded and clean
  views of one scene are trained to land on the same point there (the unified loss in
  ``lightning_modules.lure``), so everything after the encoder sees "clean" features.
- :class:`TextGuidedAttention` (TGA): an inner residual block, a channel modulation from the
  prompt's pooled vector, cross-attention from every pixel to the prompt's token embeddings (so a
  word such as "dark" or "noisy" acts where the image shows it), and another inner residual block.
  The residual blocks around the attention carry visual detail past it unchanged.
- :class:`LatentFusionRules`: per-pixel soft selection between the two sources' latents plus a
  text-guided residual correction, i.e. a fusion rule learned inside the unified space.
- :class:`LatentDecoder`: residual blocks, a 3x3 convolution and a pixel shuffle back to luminance.

Every normalisation is per pixel (over channels), and nothing pools over the image, so a tile
fuses the same as the whole image around it (predict fuses large images in tiles).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_modules.networks.layers import ChannelNorm, ResidualBlock, conv3x3, zero_initialised
from lightning_modules.text import PromptEmbeddings


class TextGuidedAttention(nn.Module):
    """Image features attend to the prompt: residual block, pooled modulation, token cross-attention, residual block.

    Args:
        channels: Channels of the image features.
        token_dim: Width of the prompt's token embeddings.
        pooled_dim: Width of the prompt's pooled embedding.
        heads: Attention heads (must divide ``channels``).
    """

    def __init__(self, channels: int, token_dim: int, pooled_dim: int, heads: int) -> None:
        super().__init__()
        if channels % heads:
            raise ValueError(f"TGA: channels ({channels}) must be divisible by attention heads ({heads})")
        self.heads = heads
        self.inner_in = ResidualBlock(channels)
        self.modulation = nn.Linear(pooled_dim, 2 * channels)
        self.norm = ChannelNorm(channels)
        self.query = nn.Conv2d(channels, channels, 1)
        self.key_value = nn.Linear(token_dim, 2 * channels)
        self.out = nn.Conv2d(channels, channels, 1)
        self.inner_out = ResidualBlock(channels)

    def forward(self, features: Tensor, text: PromptEmbeddings) -> Tensor:
        features = self.inner_in(features)
        scale, shift = self.modulation(text.pooled).chunk(2, dim=-1)
        features = features * (1 + scale[..., None, None]) + shift[..., None, None]
        batch, channels, height, width = features.shape
        head_dim = channels // self.heads
        query = self.query(self.norm(features)).reshape(batch, self.heads, head_dim, height * width).transpose(-1, -2)
        key, value = self.key_value(text.tokens).chunk(2, dim=-1)
        key = key.reshape(batch, -1, self.heads, head_dim).transpose(1, 2)
        value = value.reshape(batch, -1, self.heads, head_dim).transpose(1, 2)
        attended = F.scaled_dot_product_attention(query, key, value, attn_mask=text.token_mask[:, None, None, :])
        attended = attended.transpose(-1, -2).reshape(batch, channels, height, width)
        return self.inner_out(features + self.out(attended))


class LatentEncoder(nn.Module):
    """Luminance + prompt -> unified latent (B, channels, H/2, W/2); text guides the 1/4 and 1/8 levels.

    The image enters as 2x2 pixel blocks stacked into 4 channels (pixel unshuffle, lossless), so the
    latent keeps full detail at half the spatial size, where convolutions with more channels are
    far cheaper than thin full-resolution ones. Those 4 channels are also added to the first 4
    latent channels unchanged (an identity path :class:`LatentDecoder` reads back), and the learned
    branch's last convolution starts at zero, so an untrained network is the identity and training
    learns the correction.
    """

    def __init__(self, channels: int, token_dim: int, pooled_dim: int, heads: int) -> None:
        super().__init__()
        wide = 2 * channels
        if channels < 4:
            raise ValueError(f"the latent needs at least 4 channels (one per pixel of a 2x2 block), got {channels}")
        self.stem = nn.Sequential(conv3x3(4, channels), ResidualBlock(channels))
        self.down_quarter = nn.Sequential(conv3x3(channels, wide, stride=2), nn.LeakyReLU(0.2))
        self.down_eighth = nn.Sequential(conv3x3(wide, wide, stride=2), nn.LeakyReLU(0.2))
        self.guide_eighth = TextGuidedAttention(wide, token_dim, pooled_dim, heads)
        self.up_quarter = conv3x3(wide, wide)
        self.guide_quarter = TextGuidedAttention(wide, token_dim, pooled_dim, heads)
        self.up_half = conv3x3(wide, channels)
        self.head = nn.Sequential(ResidualBlock(channels), zero_initialised(conv3x3(channels, channels)))
        self.channels = channels

    def forward(self, image: Tensor, text: PromptEmbeddings) -> Tensor:
        pixels = F.pixel_unshuffle(image, 2)
        half = self.stem(pixels)
        quarter = self.down_quarter(half)
        eighth = self.guide_eighth(self.down_eighth(quarter), text)
        quarter = self.guide_quarter(
            quarter + self.up_quarter(F.interpolate(eighth, scale_factor=2.0, mode="bilinear")), text
        )
        half = half + self.up_half(F.interpolate(quarter, scale_factor=2.0, mode="bilinear"))
        return F.pad(pixels, (0, 0, 0, 0, 0, self.channels - 4)) + self.head(half)


class LatentFusionRules(nn.Module):
    """Two latents + prompt -> one: soft per-pixel selection plus a text-guided residual."""

    def __init__(self, channels: int, token_dim: int, pooled_dim: int, heads: int) -> None:
        super().__init__()
        self.mix = nn.Sequential(nn.Conv2d(3 * channels, channels, 1), nn.LeakyReLU(0.2), ResidualBlock(channels))
        self.guide = TextGuidedAttention(channels, token_dim, pooled_dim, heads)
        self.select = conv3x3(channels, 2)
        self.residual = conv3x3(channels, channels)

    def forward(self, latent_a: Tensor, latent_b: Tensor, text: PromptEmbeddings) -> Tensor:
        # |a - b| tells the rule where the sources disagree, which is where a choice matters.
        context = self.guide(self.mix(torch.cat([latent_a, latent_b, (latent_a - latent_b).abs()], dim=1)), text)
        weights = self.select(context).softmax(dim=1)
        return weights[:, :1] * latent_a + weights[:, 1:] * latent_b + self.residual(context)


class LatentDecoder(nn.Module):
    """Unified latent -> luminance at full resolution (no output activation; predict clamps to [0, 1]).

    The first 4 latent channels (the encoder's identity path) plus a learned correction that starts
    at zero are pixel-shuffled back into 2x2 blocks.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            ResidualBlock(channels), ResidualBlock(channels), zero_initialised(conv3x3(channels, 4))
        )

    def forward(self, latent: Tensor) -> Tensor:
        return F.pixel_shuffle(latent[:, :4] + self.body(latent), 2)


class LURENet(nn.Module):
    """Encoder, fusion rules and decoder of LURE.

    Args:
        channels: Channels of the latent (the 1/2 and 1/4 levels of the encoder use twice as many).
        token_dim: Width of the prompt encoder's token embeddings.
        pooled_dim: Width of its pooled embedding.
        heads: Attention heads of every TGA block.
    """

    size_multiple = 8
    """Pixel unshuffle and two stride-2 levels in the encoder."""

    def __init__(self, channels: int, token_dim: int, pooled_dim: int, heads: int = 2) -> None:
        super().__init__()
        self.encoder = LatentEncoder(channels, token_dim, pooled_dim, heads)
        self.rules = LatentFusionRules(channels, token_dim, pooled_dim, heads)
        self.decoder = LatentDecoder(channels)
        # channels-last is the fast layout for convolutions on CPU (oneDNN) and for GPU tensor cores
        self.to(memory_format=torch.channels_last)

    def encode(self, image: Tensor, text: PromptEmbeddings) -> Tensor:
        return self.encoder(image.contiguous(memory_format=torch.channels_last), text)

    def decode(self, latent: Tensor) -> Tensor:
        return self.decoder(latent)

    def fuse_latents(self, latent_a: Tensor, latent_b: Tensor, text: PromptEmbeddings) -> Tensor:
        return self.rules(latent_a, latent_b, text)

    def forward(self, a: Tensor, b: Tensor, is_pair: Tensor, text: PromptEmbeddings) -> Tensor:
        """Fused (pairs) or restored (``is_pair`` False: ``b`` ignored) luminance, (B, 1, H, W)."""
        latent = self.encode(a, text)
        if bool(is_pair.any()):
            pairs = is_pair.nonzero().squeeze(1)
            pair_text = select_text(text, pairs)
            fused = self.fuse_latents(latent[pairs], self.encode(b[pairs], pair_text), pair_text)
            latent = latent.index_copy(0, pairs, fused)
        return self.decode(latent)


def select_text(text: PromptEmbeddings, index: Tensor) -> PromptEmbeddings:
    """The embeddings of the samples at ``index`` (a 1-D index tensor)."""
    return PromptEmbeddings(text.pooled[index], text.tokens[index], text.token_mask[index])
