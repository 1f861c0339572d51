"""Prompt encoder (open_clip text tower, cache, checkpoint state, weight lookup) and prompt table."""

from __future__ import annotations

import json
import random
from pathlib import Path

import open_clip
import pytest
import torch
import yaml

from datamodules.schema import DEGRADATIONS, MAX_SEVERITY, TASKS
from lightning_modules.prompts import DEFAULT_PROMPT_TABLE, PromptTable
from lightning_modules.text import PromptEncoder, TextEncoderConfig, TextWeightsUnavailable, find_clip_weights

TINY_TEXT = {"context_length": 24, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}
TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 32, "patch_size": 16},
    "text_cfg": TINY_TEXT,
}


@pytest.fixture(autouse=True)
def one_thread():
    """The towers here are tiny: one thread beats two threads fighting over a shared CPU."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def tiny_config(**overrides: object) -> TextEncoderConfig:
    settings = {
        "model_name": "tiny-text",
        "random_init": True,
        "model_config": {"embed_dim": 16, "text_cfg": TINY_TEXT},
    }
    return TextEncoderConfig(**{**settings, **overrides})


def count_tower_calls(encoder: PromptEncoder) -> list[int]:
    """Records the number of prompts in every call of the (loaded) tower."""
    tower = encoder.load_tower()
    calls: list[int] = []
    original = tower.forward

    def counting(token_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        calls.append(token_ids.shape[0])
        return original(token_ids)

    tower.forward = counting
    return calls


def test_each_distinct_prompt_is_encoded_once() -> None:
    encoder = PromptEncoder(tiny_config())
    calls = count_tower_calls(encoder)
    first = encoder.encode(["dark", "noisy", "dark"])
    second = encoder.encode(["noisy", "hazy", "dark", "hazy"])
    assert calls == [2, 1]  # "dark" and "noisy" once, then only "hazy"
    assert torch.equal(first.pooled[0], first.pooled[2]) and torch.equal(first.pooled[0], second.pooled[2])
    assert sorted(encoder.cached_prompts) == ["dark", "hazy", "noisy"]


def test_embeddings_hold_tokens_with_a_mask() -> None:
    encoder = PromptEncoder(tiny_config())
    text = encoder.encode(["short", "a somewhat longer prompt about haze"])
    assert text.pooled.shape == (2, 16)
    assert text.tokens.shape[0] == 2 and text.tokens.shape[2] == 32
    lengths = text.token_mask.sum(dim=1).tolist()
    assert lengths[0] < lengths[1] == text.tokens.shape[1]  # start, words, end token; the short one padded
    assert torch.all(text.tokens[0, lengths[0] :] == 0)


def test_random_weights_depend_on_the_seed_only() -> None:
    same = [PromptEncoder(tiny_config()).encode(["fog"]).pooled for _ in range(2)]
    other = PromptEncoder(tiny_config(random_init_seed=1)).encode(["fog"]).pooled
    assert torch.equal(same[0], same[1])
    assert not torch.allclose(same[0], other)


@pytest.fixture
def tiny_clip_weights(tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    """A tiny CLIP registered the way open_clip registers custom models, and its weights saved to a file."""
    (tmp_path / "tiny-clip.json").write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(tmp_path / "tiny-clip.json")
    torch.manual_seed(3)
    clip = open_clip.create_model("tiny-clip", pretrained=None)
    weights = tmp_path / "tiny-clip.pt"
    torch.save(clip.state_dict(), weights)
    return weights, clip


def test_weights_file_loads_the_text_tower_of_a_clip_checkpoint(
    tiny_clip_weights: tuple[Path, torch.nn.Module],
) -> None:
    weights, clip = tiny_clip_weights
    encoder = PromptEncoder(TextEncoderConfig(model_name="tiny-clip", pretrained=None, weights_file=str(weights)))
    prompts = ["the visible image is very dark", "multi-focus image fusion"]
    ours = encoder.encode(prompts).pooled
    reference = clip.encode_text(open_clip.get_tokenizer("tiny-clip")(prompts))
    torch.testing.assert_close(ours, reference)
    assert encoder.identity == "tiny-clip/file:tiny-clip.pt"


def test_no_weights_fails_with_how_to_provide_them(tmp_path: Path) -> None:
    encoder = PromptEncoder(TextEncoderConfig(model_name="ViT-B-32", pretrained="openai", cache_dir=str(tmp_path)))
    with pytest.raises(TextWeightsUnavailable) as error:
        encoder.load_tower()
    message = str(error.value)
    assert "--model.text_encoder.weights_file" in message and "random_init" in message and "cache_dir" in message
    missing = PromptEncoder(tiny_config(random_init=False, weights_file=str(tmp_path / "nope.pt")))
    with pytest.raises(TextWeightsUnavailable, match="nope.pt"):
        missing.load_tower()


def test_a_tag_is_found_in_the_local_hub_cache_only(tmp_path: Path) -> None:
    config = TextEncoderConfig(model_name="ViT-B-32", pretrained="openai", cache_dir=str(tmp_path))
    with pytest.raises(TextWeightsUnavailable):
        find_clip_weights(config)
    # The Hugging Face hub cache layout, as a download would have left it (no network involved).
    repo = tmp_path / "models--timm--vit_base_patch32_clip_224.openai"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    snapshot = repo / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (snapshot / "open_clip_model.safetensors").write_bytes(b"weights")
    assert find_clip_weights(config) == snapshot / "open_clip_model.safetensors"


def test_the_cache_survives_a_checkpoint_without_weights(
    tmp_path: Path, tiny_clip_weights: tuple[Path, torch.nn.Module]
) -> None:
    weights, _ = tiny_clip_weights
    config = TextEncoderConfig(model_name="tiny-clip", pretrained=None, weights_file=str(weights))
    trained = PromptEncoder(config)
    reference = trained.encode(["remove the haze", "image restoration"])
    path = tmp_path / "state.pt"
    torch.save(trained.cache_state(), path)
    weights.unlink()  # e.g. predicting on another machine

    fresh = PromptEncoder(config)
    fresh.load_cache_state(torch.load(path, weights_only=True))
    restored = fresh.encode(["image restoration", "remove the haze"])
    torch.testing.assert_close(restored.pooled, reference.pooled.flip(0))
    torch.testing.assert_close(
        restored.tokens[1, : reference.token_mask[0].sum()], reference.tokens[0, : reference.token_mask[0].sum()]
    )
    with pytest.raises(TextWeightsUnavailable, match="not in the prompt cache.*does not exist"):
        fresh.encode(["a prompt never seen"])


def test_a_cache_from_another_tower_is_refused() -> None:
    state = PromptEncoder(tiny_config()).cache_state()
    with pytest.raises(ValueError, match="encoded by text tower"):
        PromptEncoder(tiny_config(random_init_seed=7)).load_cache_state(state)


# ---------------------------------------------------------------------------------- prompt table
def test_the_shipped_table_covers_every_task_kind_and_severity() -> None:
    table = PromptTable.from_yaml()
    for task in TASKS:
        for kind in DEGRADATIONS:
            for severity in range(1, MAX_SEVERITY + 1):
                assert table.phrase_options(task, kind, severity)
    prompts = table.evaluation_prompts()
    assert len(prompts) == len(set(prompts)) == len(TASKS) * (1 + len(DEGRADATIONS) * MAX_SEVERITY)


def test_prompts_follow_task_degradation_and_severity() -> None:
    table = PromptTable.from_yaml()
    severities = [0.0] * len(DEGRADATIONS)
    severities[DEGRADATIONS.index("lowlight")] = 3.0
    assert table.prompt("ivif", severities) == "infrared and visible image fusion; the visible image is very dark"
    assert table.prompt("restore", severities) == "image restoration; the image is very dark"
    severities[DEGRADATIONS.index("noise")] = 1.0
    assert (
        table.prompt("restore", severities) == "image restoration; the image has slight noise; the image is very dark"
    )
    assert table.prompt("mfif", [0.0] * len(DEGRADATIONS)) == "multi-focus image fusion"


def test_training_draws_paraphrases_evaluation_takes_the_first() -> None:
    table = PromptTable.from_yaml()
    severities = [0.0] * len(DEGRADATIONS)
    severities[DEGRADATIONS.index("haze")] = 2.0
    rng = random.Random(0)
    drawn = {table.prompt("ivif", severities, rng) for _ in range(200)}
    assert len(drawn) == len(table.tasks["ivif"]) * len(table.phrase_options("ivif", "haze", 2))
    assert {table.prompt("ivif", severities) for _ in range(5)} == {
        "infrared and visible image fusion; the visible image is hazy"
    }


def _write_table(path: Path, mutate) -> Path:
    record = yaml.safe_load(DEFAULT_PROMPT_TABLE.read_text())
    mutate(record)
    path.write_text(yaml.safe_dump(record))
    return path


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r: r["tasks"].pop("nir"), r"tasks\.nir"),
        (lambda r: r["tasks"].update(sonar=["x"]), "unknown task"),
        (lambda r: r["degradations"]["default"].pop("rain"), "missing degradation kind"),
        (
            lambda r: r["degradations"]["default"]["noise"].pop(3),
            r"default\.noise must give phrases for every severity",
        ),
        (lambda r: r["degradations"]["ivif"].update(smoke={1: ["a"], 2: ["b"], 3: ["c"]}), "unknown degradation kind"),
        (lambda r: r["degradations"]["default"]["blur"].update({2: []}), r"default\.blur\.2"),
        (lambda r: r["degradations"].update(sonar={}), "neither 'default' nor a task"),
    ],
)
def test_a_broken_table_is_named_with_the_fix(tmp_path: Path, mutate, message: str) -> None:
    path = _write_table(tmp_path / "prompts.yaml", mutate)
    with pytest.raises(ValueError, match=message) as error:
        PromptTable.from_yaml(path)
    assert str(path) in str(error.value)


def test_duplicate_keys_in_a_table_are_an_error(tmp_path: Path) -> None:
    text = DEFAULT_PROMPT_TABLE.read_text().replace("degradations:\n", "tasks:\n  ivif: [x]\ndegradations:\n", 1)
    path = tmp_path / "prompts.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match="duplicate key 'tasks'"):
        PromptTable.from_yaml(path)
