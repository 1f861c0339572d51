"""Image features from a frozen pretrained model: open_clip's visual tower.

:class:`ImageFeatureEncoder` maps luminance images to the visual tower's pooled, projected CLIP
embedding. Its weights are handled exactly like the text tower's (:mod:`lightning_modules.text`,
same :class:`~lightning_modules.text.CLIPTowerConfig` and the same lookup): named in the config,
never downloaded, a fast failure that says how to provide them, or deterministic random weights
when the config says so. The tower is frozen and kept out of the module tree, so it is never
optimised, never wrapped by DDP/DeepSpeed and never written to a checkpoint.

Unlike prompts, images are new at every call, so there is no cache: a model that uses these
features needs the visual weights at predict time too (the checkpoint's hyperparameters name
them; with ``random_init`` the seed rebuilds the same tower anywhere).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.model import CLIPVisionCfg, _build_vision_tower
from torch import Tensor, nn

from lightning_modules.text import (
    CLIPTowerConfig,
    clip_architecture,
    clip_tower_state_dict,
    find_clip_weights,
    quick_gelu_of,
)


class ImageFeatureEncoder(nn.Module):
    """A frozen open_clip visual tower: (B, 1 or 3, H, W) images in [0, 1] -> (B, feature_dim) embeddings.

    Images are resized to the tower's input size (whatever their own size), grey ones repeated
    over the three colour channels, and normalised with CLIP's statistics.

    Args:
        config: The tower and the source of its weights (``model_config`` needs ``embed_dim`` and
            ``vision_cfg``).
    """

    def __init__(self, config: CLIPTowerConfig) -> None:
        super().__init__()
        self.config = config
        self.architecture = clip_architecture(config, "vision")
        self.vision_cfg = CLIPVisionCfg(**self.architecture["vision_cfg"])
        if self.vision_cfg.timm_model_name:
            raise ValueError(
                f"image encoder {config.model_name!r} builds its visual tower with timm, whose weights loader may "
                "download; choose an open_clip architecture with its own vision transformer or ResNet (e.g. ViT-B-32)"
            )
        self.feature_dim = int(self.architecture["embed_dim"])
        self.register_buffer("mean", torch.tensor(OPENAI_DATASET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(OPENAI_DATASET_STD).view(1, 3, 1, 1), persistent=False)
        # Kept out of the module tree (see the module docstring); loaded on first need.
        self.__dict__["_tower"] = None

    def load_tower(self) -> nn.Module:
        """Build the frozen visual tower and load its weights (once); fails fast without weights."""
        if self._tower is not None:
            return self._tower
        config = self.config
        weights = None if config.random_init and not config.weights_file else find_clip_weights(config, "vision")
        with torch.random.fork_rng(devices=[]):
            # random weights depend on the seed only, so predict rebuilds the tower the model trained with
            torch.manual_seed(config.random_init_seed)
            tower = _build_vision_tower(
                self.feature_dim, self.vision_cfg, quick_gelu=quick_gelu_of(config, self.architecture)
            )
        if weights is not None:
            tower.load_state_dict(clip_tower_state_dict(weights, "vision"), strict=True)
        tower.eval().requires_grad_(False)
        self.__dict__["_tower"] = tower
        return tower

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        tower = self.load_tower()
        if self.mean.device != next(tower.parameters()).device:
            tower.to(self.mean.device)
        side = self.vision_cfg.image_size
        size = (side, side) if isinstance(side, int) else tuple(side)
        resized = F.interpolate(images.float(), size=size, mode="bilinear", antialias=True, align_corners=False)
        pixels = (resized.expand(-1, 3, -1, -1).clamp(0.0, 1.0) - self.mean) / self.std
        return tower(pixels).float()
