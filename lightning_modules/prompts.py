"""The prompt table: task and degradation phrases, with paraphrases, that compose a sample's prompt.

:class:`PromptTable` reads ``recipes/configs/prompts.yaml``: task phrases, and per degradation kind
and severity the phrases that say what is wrong, with paraphrases. A sample's prompt is its task
phrase followed by one phrase per degradation it carries, joined by ``"; "``. Training draws a random
paraphrase of every part; evaluation always takes the first, so evaluation prompts are fixed.

The optional ``modalities`` section gives, per task, fixed descriptions of the two sources and of
the wanted fused image (``a``, ``b``, ``fused``), for models that describe each image separately.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from datamodules.schema import DEGRADATIONS, MAX_SEVERITY, TASKS

DEFAULT_PROMPT_TABLE = Path(__file__).resolve().parents[1] / "recipes" / "configs" / "prompts.yaml"
TABLE_SECTIONS = {"tasks", "degradations", "modalities"}
MODALITY_ROLES = ("a", "b", "fused")


class PromptTable:
    """Task and degradation phrases (with paraphrases) that compose a sample's prompt.

    Args:
        tasks: Task name -> paraphrases of the task phrase; every task in ``TASKS``.
        degradations: ``"default"`` -> kind -> severity -> paraphrases, covering every kind in
            ``DEGRADATIONS`` and severity 1..``MAX_SEVERITY``; optional per-task entries (same
            shape, any subset of kinds, all severities of a kind) word a kind for that task.
        modalities: Optional: task name -> ``{"a": ..., "b": ..., "fused": ...}``, a fixed prompt
            describing each source and the fused image; every task in ``TASKS`` when given.
        source: Where the table came from, for error messages.
    """

    def __init__(
        self,
        tasks: Mapping[str, Sequence[str]],
        degradations: Mapping[str, Mapping[str, Mapping[int, Sequence[str]]]],
        modalities: Mapping[str, Mapping[str, str]] | None = None,
        source: str = "<prompt table>",
    ) -> None:
        self.source = source
        self.modalities = None if modalities is None else _modality_prompts(modalities, f"{source}: modalities")
        self.tasks = {task: _phrases(tasks.get(task), f"{source}: tasks.{task}") for task in TASKS}
        unknown_tasks = set(tasks) - set(TASKS)
        if unknown_tasks:
            raise ValueError(
                f"{source}: unknown task(s) {sorted(unknown_tasks)} under tasks; known: {', '.join(TASKS)}"
            )
        if "default" not in degradations:
            raise ValueError(f"{source}: degradations needs a 'default' entry covering every kind")
        self.degradations: dict[str, dict[str, dict[int, list[str]]]] = {}
        for scope, kinds in degradations.items():
            if scope != "default" and scope not in TASKS:
                raise ValueError(f"{source}: degradations.{scope} is neither 'default' nor a task ({', '.join(TASKS)})")
            required = DEGRADATIONS if scope == "default" else ()
            self.degradations[scope] = _severity_phrases(kinds, required, f"{source}: degradations.{scope}")

    @classmethod
    def from_yaml(cls, path: str | Path | None = None) -> PromptTable:
        """Read a table file (default: ``recipes/configs/prompts.yaml``)."""
        path = Path(path or DEFAULT_PROMPT_TABLE)
        try:
            record = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)
        except OSError as error:
            raise FileNotFoundError(f"prompt table {str(path)!r} cannot be read: {error}") from None
        except yaml.YAMLError as error:
            raise ValueError(f"prompt table {str(path)!r} is not valid YAML: {error}") from None
        if not isinstance(record, dict) or not {"tasks", "degradations"} <= set(record) <= TABLE_SECTIONS:
            raise ValueError(
                f"prompt table {str(path)!r} must be a mapping with the keys 'tasks' and 'degradations' "
                "and optionally 'modalities'"
            )
        return cls(record["tasks"], record["degradations"], record.get("modalities"), source=str(path))

    def modality_prompts(self, task: str) -> tuple[str, str, str]:
        """The fixed prompts describing source ``a``, source ``b`` and the fused image of a ``task`` sample."""
        if self.modalities is None:
            raise ValueError(
                f"prompt table {self.source} has no 'modalities' section; add one giving, for every task, "
                "prompts a, b and fused (see recipes/configs/prompts.yaml)"
            )
        return self.modalities[task]

    def phrase_options(self, task: str, kind: str, severity: int) -> list[str]:
        """Paraphrases saying that a ``task`` sample has ``kind`` at ``severity``."""
        scope = self.degradations.get(task, {})
        return (scope.get(kind) or self.degradations["default"][kind])[severity]

    def prompt(self, task: str, severities: Sequence[float], rng: random.Random | None = None) -> str:
        """The prompt of a sample: ``severities`` per kind in ``DEGRADATIONS`` order (0 = absent).

        With ``rng`` each part is a random paraphrase (training); without, the first (evaluation).
        """

        def pick(options: list[str]) -> str:
            return options[0] if rng is None else rng.choice(options)

        parts = [pick(self.tasks[task])]
        for kind, severity in zip(DEGRADATIONS, severities):
            level = int(round(float(severity)))
            if level > 0:
                parts.append(pick(self.phrase_options(task, kind, min(level, MAX_SEVERITY))))
        return "; ".join(parts)

    def evaluation_prompts(self) -> list[str]:
        """Every first-paraphrase prompt with at most one degradation (what evaluation asks for)."""
        prompts = []
        for task in TASKS:
            prompts.append(self.prompt(task, [0.0] * len(DEGRADATIONS)))
            for (index, _), severity in itertools.product(enumerate(DEGRADATIONS), range(1, MAX_SEVERITY + 1)):
                severities = [0.0] * len(DEGRADATIONS)
                severities[index] = float(severity)
                prompts.append(self.prompt(task, severities))
        return prompts


class _UniqueKeyLoader(yaml.SafeLoader):
    """Safe YAML that rejects a repeated key (plain YAML silently keeps the last one)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def _phrases(value: Any, where: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v.strip() for v in value):
        raise ValueError(f"{where} must be a non-empty list of non-empty strings")
    return [v.strip() for v in value]


def _severity_phrases(kinds: Any, required: Sequence[str], where: str) -> dict[str, dict[int, list[str]]]:
    if not isinstance(kinds, dict):
        raise ValueError(f"{where} must map degradation kinds to severities")
    unknown = set(kinds) - set(DEGRADATIONS)
    if unknown:
        raise ValueError(f"{where}: unknown degradation kind(s) {sorted(unknown)}; known: {', '.join(DEGRADATIONS)}")
    missing = [kind for kind in required if kind not in kinds]
    if missing:
        raise ValueError(f"{where}: missing degradation kind(s) {missing}")
    table: dict[str, dict[int, list[str]]] = {}
    for kind, by_severity in kinds.items():
        if not isinstance(by_severity, dict) or set(by_severity) != set(range(1, MAX_SEVERITY + 1)):
            raise ValueError(f"{where}.{kind} must give phrases for every severity 1..{MAX_SEVERITY}")
        table[kind] = {
            severity: _phrases(phrases, f"{where}.{kind}.{severity}") for severity, phrases in by_severity.items()
        }
    return table


def _modality_prompts(modalities: Any, where: str) -> dict[str, tuple[str, str, str]]:
    if not isinstance(modalities, dict) or set(modalities) != set(TASKS):
        found = sorted(modalities) if isinstance(modalities, dict) else type(modalities).__name__
        raise ValueError(f"{where} must map every task ({', '.join(TASKS)}) to its prompts; found {found}")
    table = {}
    for task, roles in modalities.items():
        if not isinstance(roles, dict) or set(roles) != set(MODALITY_ROLES):
            raise ValueError(f"{where}.{task} must have exactly the prompts {', '.join(MODALITY_ROLES)}")
        prompts = tuple(roles[role] for role in MODALITY_ROLES)
        if not all(isinstance(prompt, str) and prompt.strip() for prompt in prompts):
            raise ValueError(f"{where}.{task}: every prompt must be a non-empty string")
        table[task] = tuple(prompt.strip() for prompt in prompts)
    return table
