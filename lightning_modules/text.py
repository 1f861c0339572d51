"""Text embeddings for text-guided models: a frozen open_clip text tower and an embedding cache.

:class:`PromptEncoder` turns prompts into CLIP text embeddings, both the pooled vector and the
per-token sequence (so image features can attend to individual words). The tower is frozen and kept
out of the module tree on purpose: its weights are never optimised, never wrapped by DDP/DeepSpeed
and never written to a checkpoint. What the model depends on is only the embeddings, so every
distinct prompt is encoded once per run and cached, and the cache is what a checkpoint stores
(:meth:`PromptEncoder.cache_state`). ``predict`` from a checkpoint therefore needs no CLIP weights
for any prompt seen in training or listed in the prompt table.

Weights come from, in this order: ``weights_file`` (a local open_clip / OpenAI CLIP checkpoint),
the local cache of a ``pretrained`` tag (Hugging Face hub cache or open_clip's URL cache; nothing
is ever downloaded), or ``random_init`` (deterministic random weights for tests and smoke runs;
prompts then carry no language meaning). With none of them the run stops at once with a message
saying how to provide weights.

Prompts themselves come from :class:`lightning_modules.prompts.PromptTable`.

The weight lookup (:class:`CLIPTowerConfig`, :func:`find_clip_weights`, :func:`clip_tower_state_dict`)
serves both towers of a CLIP model: the visual tower of :mod:`lightning_modules.image_features`
is configured, found and loaded the same way.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import Any

import open_clip
import torch
from open_clip.factory import load_state_dict as load_clip_state_dict
from open_clip.model import CLIPTextCfg, _build_text_tower, convert_to_custom_text_state_dict
from open_clip.tokenizer import SimpleTokenizer
from torch import nn

# open_clip's preferred safetensors copy of a hub checkpoint is looked up before the pickle one.
_HUB_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


@dataclasses.dataclass
class CLIPTowerConfig:
    """Which open_clip model's tower (text or visual) to build, and where its weights come from.

    Args:
        model_name: An open_clip architecture name (``open_clip.list_models()``), e.g. ``ViT-B-32``.
        pretrained: A pretrained tag of that architecture (``open_clip.list_pretrained_tags_by_model``)
            whose weights are already in the local cache; nothing is downloaded.
        weights_file: A local checkpoint file (open_clip or OpenAI CLIP format, ``.pt``/``.bin``/
            ``.safetensors``); takes precedence over ``pretrained``.
        cache_dir: Where to look for a tag's cached weights; ``None`` means the Hugging Face hub cache
            (``$HF_HOME``) and ``~/.cache/clip`` for URL-hosted weights.
        random_init: Use deterministic random weights instead (tests and smoke runs only).
        random_init_seed: Seed of those random weights, so a resumed run or predict rebuilds the
            same tower (for the text tower: the one that encoded the prompts cached in a checkpoint).
        model_config: An inline open_clip model config (``embed_dim`` and the tower's ``text_cfg`` or
            ``vision_cfg``) for an architecture open_clip does not ship, e.g. a tiny tower for tests;
            replaces the config looked up by ``model_name`` (which then only names it).
        quick_gelu: Use QuickGELU activations (OpenAI's original weights need them); ``None`` takes
            the setting from the model config or the pretrained tag.
    """

    model_name: str = "ViT-B-32"
    pretrained: str | None = "openai"
    weights_file: str | None = None
    cache_dir: str | None = None
    random_init: bool = False
    random_init_seed: int = 0
    model_config: dict[str, Any] | None = None
    quick_gelu: bool | None = None


TextEncoderConfig = CLIPTowerConfig
"""The configuration of the text tower that encodes prompts."""


def save_tower_configs(
    hparams: MutableMapping[str, Any], **towers: CLIPTowerConfig | dict | None
) -> list[CLIPTowerConfig]:
    """A module's CLIP tower arguments as configs, saved into its ``hparams`` as plain dicts.

    ``load_from_checkpoint`` passes a saved tower back as a dict and ``None`` means the default
    tower; the checkpoint holds plain dicts so that it loads with ``torch.load(weights_only=True)``.
    Call it after ``save_hyperparameters`` with the towers' argument names ignored.
    """
    configs = [CLIPTowerConfig(**t) if isinstance(t, dict) else t or CLIPTowerConfig() for t in towers.values()]
    for name, config in zip(towers, configs):
        hparams[name] = dataclasses.asdict(config)
    return configs


@dataclasses.dataclass
class PromptEmbeddings:
    """CLIP text embeddings of a batch of prompts.

    ``pooled``: (B, D) projected sentence vectors; ``tokens``: (B, L, W) per-token features after the
    tower's final LayerNorm, padded to the longest prompt; ``token_mask``: (B, L), True on real tokens.
    """

    pooled: torch.Tensor
    tokens: torch.Tensor
    token_mask: torch.Tensor


class TextWeightsUnavailable(RuntimeError):
    """Raised when a CLIP tower must run (a prompt to encode, an image to embed) and its weights are not at hand."""


class PromptEncoder(nn.Module):
    """A frozen open_clip text tower behind a per-prompt embedding cache.

    Args:
        config: The tower and the source of its weights.
    """

    def __init__(self, config: TextEncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.architecture = clip_architecture(config, "text")
        text_cfg = CLIPTextCfg(**self.architecture["text_cfg"])
        if text_cfg.hf_model_name or text_cfg.hf_tokenizer_name:
            raise ValueError(
                f"text encoder {config.model_name!r} uses a Hugging Face text model or tokenizer, which would need a "
                "download; choose an open_clip architecture with its own text transformer (e.g. ViT-B-32)"
            )
        self.tokenizer = SimpleTokenizer(context_length=text_cfg.context_length)
        if text_cfg.vocab_size != self.tokenizer.vocab_size:
            raise ValueError(
                f"text encoder {config.model_name!r}: text_cfg.vocab_size is {text_cfg.vocab_size}, but the CLIP BPE "
                f"tokenizer has {self.tokenizer.vocab_size} tokens; set vocab_size to {self.tokenizer.vocab_size}"
            )
        self.pooled_dim = int(self.architecture["embed_dim"])
        self.token_dim = int(text_cfg.width)
        self._cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        # Kept out of the module tree (see the module docstring); loaded on first need.
        self.__dict__["_tower"] = None

    # ------------------------------------------------------------------------------ the tower
    @property
    def identity(self) -> str:
        """Names the tower and its weights; a cache is only valid for the tower that filled it."""
        config = self.config
        if config.weights_file:
            source = f"file:{Path(config.weights_file).name}"
        elif config.random_init:
            source = f"random:{config.random_init_seed}"
        else:
            source = f"tag:{config.pretrained}"
        return f"{config.model_name}/{source}"

    def load_tower(self) -> nn.Module:
        """Build the frozen text tower and load its weights (once); fails fast without weights."""
        if self._tower is not None:
            return self._tower
        config = self.config
        weights = None if config.random_init and not config.weights_file else find_clip_weights(config, "text")
        text_cfg = {**self.architecture["text_cfg"], "output_tokens": True}
        with torch.random.fork_rng(devices=[]):
            # random weights depend on the seed only, so a resumed run has the same tower.
            torch.manual_seed(config.random_init_seed)
            tower = _build_text_tower(self.pooled_dim, text_cfg, quick_gelu=quick_gelu_of(config, self.architecture))
        if weights is not None:
            tower.load_state_dict(clip_tower_state_dict(weights, "text"), strict=True)
        tower.eval().requires_grad_(False)
        self.__dict__["_tower"] = tower
        return tower

    # ------------------------------------------------------------------------------- encoding
    @property
    def cached_prompts(self) -> list[str]:
        return list(self._cache)

    @torch.no_grad()
    def encode(self, prompts: Sequence[str], device: torch.device | str = "cpu") -> PromptEmbeddings:
        """Embeddings of ``prompts`` on ``device``; prompts not in the cache are encoded (once) and cached."""
        missing = list(dict.fromkeys(p for p in prompts if p not in self._cache))
        if missing:
            self._encode_into_cache(missing)
        pooled = torch.stack([self._cache[p][0] for p in prompts])
        token_list = [self._cache[p][1] for p in prompts]
        longest = max(t.shape[0] for t in token_list)
        tokens = pooled.new_zeros(len(prompts), longest, self.token_dim)
        token_mask = torch.zeros(len(prompts), longest, dtype=torch.bool)
        for index, sequence in enumerate(token_list):
            tokens[index, : sequence.shape[0]] = sequence
            token_mask[index, : sequence.shape[0]] = True
        return PromptEmbeddings(pooled.to(device), tokens.to(device), token_mask.to(device))

    def _encode_into_cache(self, prompts: list[str]) -> None:
        try:
            tower = self.load_tower()
        except TextWeightsUnavailable as error:
            shown = ", ".join(repr(p) for p in prompts[:3]) + (" ..." if len(prompts) > 3 else "")
            raise TextWeightsUnavailable(
                f"prompt(s) {shown} are not in the prompt cache of this model (a checkpoint holds the prompts it saw "
                f"in training and the prompt table's evaluation prompts), so they must be encoded. {error}"
            ) from None
        device = next(tower.parameters()).device
        token_ids = self.tokenizer(prompts).to(device)
        pooled, tokens = tower(token_ids)
        # SimpleTokenizer pads with id 0 after the end-of-text token; those positions carry nothing.
        lengths = (token_ids != 0).sum(dim=1).tolist()
        for prompt, vector, sequence, length in zip(prompts, pooled, tokens, lengths):
            self._cache[prompt] = (vector.float().cpu(), sequence[:length].float().cpu())

    # ------------------------------------------------------------------------ checkpoint state
    def cache_state(self) -> dict[str, Any]:
        """The cache as plain tensors and strings (what a checkpoint stores; safe for ``weights_only``)."""
        prompts = list(self._cache)
        lengths = [self._cache[p][1].shape[0] for p in prompts]
        tokens = torch.zeros(len(prompts), max(lengths, default=0), self.token_dim)
        for index, prompt in enumerate(prompts):
            tokens[index, : lengths[index]] = self._cache[prompt][1]
        pooled = torch.stack([self._cache[p][0] for p in prompts]) if prompts else torch.zeros(0, self.pooled_dim)
        return {
            "identity": self.identity,
            "prompts": prompts,
            "pooled": pooled,
            "tokens": tokens,
            "lengths": torch.tensor(lengths, dtype=torch.int64),
        }

    def load_cache_state(self, state: Mapping[str, Any]) -> None:
        """Restore a cache written by :meth:`cache_state`, refusing one filled by another tower."""
        if state["identity"] != self.identity:
            raise ValueError(
                f"the checkpoint's prompt cache was encoded by text tower {state['identity']!r}, but this model is "
                f"configured with {self.identity!r}; use the text_encoder settings the checkpoint was trained with"
            )
        pooled, tokens, lengths = state["pooled"], state["tokens"], state["lengths"].tolist()
        if pooled.shape[1:] != (self.pooled_dim,) or tokens.shape[2:] != (self.token_dim,):
            raise ValueError(
                "the checkpoint's prompt cache has embedding sizes "
                f"{tuple(pooled.shape[1:])}/{tuple(tokens.shape[2:])}, "
                f"the configured text tower {self.pooled_dim}/{self.token_dim}"
            )
        self._cache = {
            prompt: (pooled[index].float(), tokens[index, : lengths[index]].float())
            for index, prompt in enumerate(state["prompts"])
        }


class PromptCacheCheckpoints:
    """Mixin for a LightningModule whose ``text_encoder`` is a :class:`PromptEncoder`: checkpoints carry its cache.

    The model depends on the prompt embeddings only, so storing the cache (every prompt encoded in the
    run) is what lets ``predict`` from the checkpoint run without CLIP weights for those prompts.
    """

    text_encoder: PromptEncoder

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["prompt_cache"] = self.text_encoder.cache_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "prompt_cache" in checkpoint:
            self.text_encoder.load_cache_state(checkpoint["prompt_cache"])


# ----------------------------------------------------------------------------- weight lookup
# Per tower: the model-config key of its architecture, its option among the model's arguments (for
# messages), and the state-dict prefix of its weights in a CLIP checkpoint.
_TOWERS = {"text": ("text_cfg", "text_encoder", "text."), "vision": ("vision_cfg", "image_encoder", "visual.")}


def clip_architecture(config: CLIPTowerConfig, tower: str = "text") -> dict[str, Any]:
    """The open_clip model config of ``config``, checked to hold ``embed_dim`` and the ``tower``'s config."""
    tower_key, option, _ = _TOWERS[tower]
    architecture = config.model_config or open_clip.get_model_config(config.model_name)
    if architecture is None:
        raise ValueError(
            f"unknown open_clip architecture {config.model_name!r}; pick one of open_clip.list_models() or give an "
            f"inline {option}.model_config with embed_dim and {tower_key}"
        )
    missing = {"embed_dim", tower_key} - set(architecture)
    if missing:
        raise ValueError(f"{option}.model_config for {config.model_name!r} lacks {', '.join(sorted(missing))}")
    return dict(architecture)


def quick_gelu_of(config: CLIPTowerConfig, architecture: Mapping[str, Any]) -> bool:
    """Whether the tower uses QuickGELU: as configured, else as the model config or the pretrained tag says."""
    if config.quick_gelu is not None:
        return config.quick_gelu
    # OpenAI's weights were trained with QuickGELU; their tags say so
    tag_config = open_clip.get_pretrained_cfg(config.model_name, config.pretrained) if config.pretrained else {}
    return bool(architecture.get("quick_gelu") or tag_config.get("quick_gelu"))


def _how_to_provide(config: CLIPTowerConfig, option: str) -> str:
    return (
        "Runs are offline and never download weights. Provide them one of these ways: "
        f"--model.{option}.weights_file PATH (a local open_clip or OpenAI CLIP checkpoint); or put the weights of "
        f"pretrained tag {config.pretrained!r} into the local cache (on a machine with internet: "
        f"python -c \"import open_clip; open_clip.create_model('{config.model_name}', "
        f"pretrained='{config.pretrained}', cache_dir='DIR')\", copy DIR here and pass "
        f"--model.{option}.cache_dir DIR); or, for smoke tests only, --model.{option}.random_init true "
        "(random weights: they carry no pretrained meaning)."
    )


def find_clip_weights(config: CLIPTowerConfig, tower: str = "text") -> Path:
    """The local file holding the weights of ``config``'s model (``tower`` names it in messages); never downloads."""
    option = _TOWERS[tower][1]
    name = option.replace("_", " ")
    if config.weights_file:
        path = Path(config.weights_file).expanduser()
        if not path.is_file():
            raise TextWeightsUnavailable(
                f"{name} weights file {str(path)!r} does not exist. {_how_to_provide(config, option)}"
            )
        return path
    if not config.pretrained:
        raise TextWeightsUnavailable(
            f"{name} {config.model_name!r} has neither weights_file nor pretrained tag. "
            f"{_how_to_provide(config, option)}"
        )
    tag = open_clip.get_pretrained_cfg(config.model_name, config.pretrained)
    if not tag:
        known = ", ".join(open_clip.list_pretrained_tags_by_model(config.model_name)) or "none"
        raise TextWeightsUnavailable(
            f"{config.pretrained!r} is not a pretrained tag of {config.model_name!r} (known: {known}). "
            f"{_how_to_provide(config, option)}"
        )
    for candidate in _cached_tag_files(tag, config.cache_dir):
        if candidate.is_file():
            return candidate
    raise TextWeightsUnavailable(
        f"the weights of {config.model_name!r} / {config.pretrained!r} ({name}) are not in the local cache. "
        f"{_how_to_provide(config, option)}"
    )


def _cached_tag_files(tag: Mapping[str, Any], cache_dir: str | None) -> Iterable[Path]:
    """Where open_clip would have stored a tag's weights (hub cache, then URL cache)."""
    hub_entry = tag.get("hf_hub", "")
    if hub_entry:
        from huggingface_hub import try_to_load_from_cache

        # "org/model/" names the repository with open_clip's default file names; "org/model/file" one file.
        repo_id, filename = os.path.split(hub_entry)
        filenames = (filename,) if filename else _HUB_WEIGHT_FILES
        for name in filenames:
            found = try_to_load_from_cache(repo_id, name, cache_dir=cache_dir)
            if isinstance(found, str):
                yield Path(found)
    url = tag.get("url", "")
    if url:
        yield Path(cache_dir or Path("~/.cache/clip").expanduser()) / os.path.basename(url)


def clip_tower_state_dict(path: Path, tower: str = "text") -> dict[str, torch.Tensor]:
    """The ``tower`` part of a CLIP checkpoint, keyed as in open_clip's ``TextTransformer`` / visual tower."""
    _, option, prefix = _TOWERS[tower]
    try:
        state = load_clip_state_dict(str(path))
    except Exception as pickle_error:  # OpenAI's original releases are TorchScript archives
        try:
            state = torch.jit.load(str(path), map_location="cpu").state_dict()
        except Exception:
            raise ValueError(
                f"cannot read {option.replace('_', ' ')} weights from {str(path)!r}: {pickle_error}"
            ) from pickle_error
    # old-format checkpoints keep the text tower at the top level (moved under "text."); "visual." is common to all
    state = convert_to_custom_text_state_dict(state)
    tower_state = {key[len(prefix) :]: value.float() for key, value in state.items() if key.startswith(prefix)}
    if not tower_state:
        raise ValueError(f"{str(path)!r} holds no CLIP {tower} tower (no {prefix}* weights)")
    return tower_state
