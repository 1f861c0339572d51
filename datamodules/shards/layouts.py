"""Published dataset layouts: where a downloaded data set keeps each side of its pairs.

A :class:`Layout` names the task, what the ``a`` and ``b`` sources (and the ``gt`` target, if any)
are, and one or more :data:`Form` s that say where the files are. :func:`discover` matches a
downloaded folder against a layout and returns its :class:`Group` s of pairs (one per split or
subset, e.g. MSRS ``train``/``test``, Harvard ``CT-MRI``/``PET-MRI``/``SPECT-MRI``), or raises an
:class:`~datamodules.images.ImageError` that lists what the layout expects and what the folder holds.

Folder names match case-insensitively (``Ir``, ``ir``, ``IR``), file types are anything
:mod:`datamodules.images` reads. The mapping follows the folder names the publishers document:

==========  =======  ========================================================================
roadscene   ivif     ``cropinfrared/`` (a) + ``crop_LR_visible/`` (b), the aligned same-size pair
roadscene-hr ivif    ``cropinfrared/`` (a) + ``crop_HR_visible/`` (b, ~3x larger: needs ``--resize``)
msrs        ivif     ``{train,test}/ir`` (a) + ``{train,test}/vi`` (b)
llvip       ivif     ``infrared/{train,test}`` (a) + ``visible/{train,test}`` (b)
m3fd        ivif     ``M3FD_Fusion/Ir`` (a) + ``M3FD_Fusion/Vis`` (b) (also ``M3FD_Detection``)
tno         ivif     ``ir/`` (a) + ``vi/`` (b), or ``IR<n>`` / ``VIS<n>`` files in one folder
harvard     med      ``{CT,PET,SPECT}-MRI/MRI`` (a) + ``.../CT|PET|SPECT`` (b)
mfifb       mfif     ``A/`` (a, near focus) + ``B/`` (b, far focus), or ``<id>_A`` / ``<id>_B`` files
lytro       mfif     ``lytro-<n>-A`` (a, near focus) / ``lytro-<n>-B`` (b, far focus) files, or ``A/`` + ``B/``
mefb        meif     ``input/<scene>/<scene>_A`` (a, under-exposed) / ``<scene>_B`` (b, over-exposed)
sice        meif     ``Dataset_Part{1,2}/<scene>/<k>`` exposure stacks (a: darkest, b: brightest) +
                     ``Label/<scene>`` (gt)
lol         restore  ``{our485,eval15}/low`` (a, degraded) + ``.../high`` (gt); LOL-v2 ``Low``/``Normal``
==========  =======  ========================================================================
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from pathlib import Path

from datamodules.images import IMAGE_SUFFIXES, ImageError, list_images, pair_by_stem, safe_key

Pair = tuple[str, dict[str, Path]]
"""A pair id and its files by role (``a``, ``b``, ``gt``)."""


@dataclasses.dataclass(frozen=True)
class Group:
    """The pairs of one split or subset of a data set; ``name`` becomes part of the shard prefix."""

    name: str
    pairs: list[Pair]


def _natural_key(text: str) -> list:
    """``"img10"`` after ``"img9"``: digit runs compare as numbers."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text)]


def resolve(root: Path, relative: str) -> Path | None:
    """``root/relative`` with every component matched case-insensitively; None if absent."""
    current = root
    for part in Path(relative).parts:
        exact = current / part
        if exact.is_dir():
            current = exact
            continue
        if not current.is_dir():
            return None
        matches = [child for child in current.iterdir() if child.is_dir() and child.name.lower() == part.lower()]
        if len(matches) != 1:
            return None
        current = matches[0]
    return current if current.is_dir() else None


def _group_name(group: str) -> str:
    return safe_key(group.replace("/", "-")).lower() if group else ""


@dataclasses.dataclass(frozen=True)
class Folders:
    """Each role's images in a folder of its own, paired by file stem.

    ``roles`` maps a role to the folder names it may have (the first that exists is used), each
    relative to SRC and formatted with ``{group}``; every group in ``groups`` whose folders all
    exist is one :class:`Group` (``""`` is SRC itself).
    """

    roles: Mapping[str, tuple[str, ...]]
    groups: tuple[str, ...] = ("",)

    def describe(self) -> str:
        sides = " + ".join(f"{role}: {' | '.join(names)}" for role, names in self.roles.items())
        groups = [group for group in self.groups if group]
        return f"folders {sides}" + (
            f" (group = {' | '.join(groups)}, or SRC itself)"
            if "" in self.groups and groups
            else f" (group = {' | '.join(groups)})"
            if groups
            else ""
        )

    def match(self, root: Path) -> list[Group]:
        found = []
        for group in self.groups:
            folders: dict[str, Path] = {}
            for role, names in self.roles.items():
                folder = next(
                    (
                        path
                        for name in names
                        if (path := resolve(root, name.format(group=group).strip("/"))) is not None
                    ),
                    None,
                )
                if folder is None:
                    break
                folders[role] = folder
            else:
                if all(list_images(folder) for folder in folders.values()):  # LLVIP's infrared/ holds only splits
                    found.append(Group(_group_name(group), pair_by_stem(folders)))
        return found


@dataclasses.dataclass(frozen=True)
class FileNames:
    """Both sources in one folder, told apart by their file names (``<id>_A`` / ``<id>_B``).

    ``patterns`` maps a role to a regular expression over the whole file stem (case-insensitive)
    with a group named ``id`` that pairs the files. ``folders`` are where to look (relative to
    SRC, the first that exists); with ``scenes`` every subfolder of it is searched too (one
    folder per scene).
    """

    patterns: Mapping[str, str]
    folders: tuple[str, ...] = ("",)
    scenes: bool = False

    def describe(self) -> str:
        names = " + ".join(f"{role}: {pattern}" for role, pattern in self.patterns.items())
        where = " | ".join(folder or "SRC" for folder in self.folders)
        return f"files named {names} in {where}" + (" (one subfolder per scene)" if self.scenes else "")

    def match(self, root: Path) -> list[Group]:
        folder = next((path for name in self.folders if (path := resolve(root, name)) is not None), None)
        if folder is None:
            return []
        searched = [folder] + (sorted(p for p in folder.iterdir() if p.is_dir()) if self.scenes else [])
        compiled = {role: re.compile(pattern, re.IGNORECASE) for role, pattern in self.patterns.items()}
        by_id: dict[str, dict[str, Path]] = {}
        for where in searched:
            for path in list_images(where).values():
                for role, pattern in compiled.items():
                    match = pattern.fullmatch(path.stem)
                    if match:
                        files = by_id.setdefault(match.group("id"), {})
                        if role in files:
                            raise ImageError(
                                f"{files[role]} and {path} are both the {role} image of pair {match.group('id')!r}"
                            )
                        files[role] = path
                        break
        if not by_id:
            return []
        one_sided = [
            f"{next(iter(files.values()))} has no {', '.join(sorted(set(compiled) - set(files)))} image"
            for files in by_id.values()
            if set(files) != set(compiled)
        ]
        if one_sided:
            raise ImageError(f"{len(one_sided)} pair(s) incomplete in {folder}:\n  " + "\n  ".join(one_sided[:20]))
        return [Group("", [(pair_id, by_id[pair_id]) for pair_id in sorted(by_id, key=_natural_key)])]


@dataclasses.dataclass(frozen=True)
class ExposureStacks:
    """One folder per scene holding an exposure sequence, the targets in a label folder (SICE).

    Files sort by exposure in natural order (``1.JPG`` darkest); ``a`` is the first, ``b`` the
    last, ``gt`` the label image with the scene's name.
    """

    label: str = "Label"
    groups: tuple[str, ...] = ("",)

    def describe(self) -> str:
        groups = " | ".join(group or "SRC" for group in self.groups)
        return f"exposure stacks <scene>/<k>.<ext> with targets {self.label}/<scene>.<ext> in {groups}"

    def match(self, root: Path) -> list[Group]:
        found = []
        for group in self.groups:
            base = resolve(root, group) if group else root
            labels_folder = resolve(base, self.label) if base is not None else None
            if labels_folder is None:
                continue
            labels = list_images(labels_folder)
            pairs: list[Pair] = []
            for scene in sorted(
                (p for p in base.iterdir() if p.is_dir() and p != labels_folder), key=lambda p: _natural_key(p.name)
            ):
                stack = sorted(list_images(scene).values(), key=lambda path: _natural_key(path.stem))
                if scene.name not in labels:
                    raise ImageError(f"{scene}: exposure stack without a target {labels_folder}/{scene.name}.*")
                if len(stack) < 2:
                    raise ImageError(f"{scene}: an exposure stack needs at least 2 images, found {len(stack)}")
                pairs.append((scene.name, {"a": stack[0], "b": stack[-1], "gt": labels[scene.name]}))
            if pairs:
                found.append(Group(_group_name(group), pairs))
        return found


Form = Folders | FileNames | ExposureStacks


@dataclasses.dataclass(frozen=True)
class Layout:
    """A published data set's folder layout.

    Args:
        name: what ``--layout`` takes.
        task: the task of every pair (see :data:`datamodules.schema.TASKS`).
        roles: what each role is, e.g. ``{"a": "infrared", "b": "visible"}``; ``gt`` if there is a target.
        forms: where the files are; the first form that matches SRC is used.
        degradations: tags stored with every sample (restoration sets).
        title: the data set's name, recorded in each sample's ``source``.
    """

    name: str
    task: str
    roles: Mapping[str, str]
    forms: tuple[Form, ...]
    title: str
    degradations: tuple[str, ...] = ()

    def describe(self) -> str:
        sides = ", ".join(f"{role} = {meaning}" for role, meaning in self.roles.items())
        return f"{self.name} ({self.title}, {self.task}: {sides})"


_SPLITS = ("train", "test", "val", "")
_IR = ("ir", "infrared", "inf", "lwir")
_VIS = ("vi", "vis", "visible")

LAYOUTS: dict[str, Layout] = {
    layout.name: layout
    for layout in (
        Layout(
            "roadscene",
            "ivif",
            {"a": "infrared", "b": "visible"},
            (Folders({"a": ("cropinfrared",), "b": ("crop_LR_visible",)}),),
            "RoadScene",
        ),
        Layout(
            "roadscene-hr",
            "ivif",
            {"a": "infrared", "b": "visible at ~3x resolution (pass --resize)"},
            (Folders({"a": ("cropinfrared",), "b": ("crop_HR_visible",)}),),
            "RoadScene",
        ),
        Layout(
            "msrs",
            "ivif",
            {"a": "infrared", "b": "visible"},
            (Folders({"a": ("{group}/ir",), "b": ("{group}/vi",)}, _SPLITS),),
            "MSRS",
        ),
        Layout(
            "llvip",
            "ivif",
            {"a": "infrared", "b": "visible"},
            (Folders({"a": ("infrared/{group}",), "b": ("visible/{group}",)}, _SPLITS),),
            "LLVIP",
        ),
        Layout(
            "m3fd",
            "ivif",
            {"a": "infrared", "b": "visible"},
            (Folders({"a": ("{group}/ir",), "b": ("{group}/vis",)}, ("M3FD_Fusion", "M3FD_Detection", "")),),
            "M3FD",
        ),
        Layout(
            "tno",
            "ivif",
            {"a": "infrared", "b": "visible"},
            (
                Folders({"a": _IR, "b": _VIS}),
                FileNames({"a": r"(?:ir|lwir)[_-]?(?P<id>.+)", "b": r"(?:vis?)[_-]?(?P<id>.+)"}),
            ),
            "TNO",
        ),
        Layout(
            "harvard",
            "med",
            {"a": "MRI", "b": "CT, PET or SPECT"},
            (
                Folders(
                    {"a": ("{group}/MRI",), "b": ("{group}/CT", "{group}/PET", "{group}/SPECT")},
                    ("CT-MRI", "PET-MRI", "SPECT-MRI", ""),
                ),
            ),
            "Harvard Whole Brain Atlas",
        ),
        Layout(
            "mfifb",
            "mfif",
            {"a": "near focus", "b": "far focus"},
            (
                Folders({"a": ("A",), "b": ("B",)}),
                FileNames({"a": r"(?P<id>.+)_A", "b": r"(?P<id>.+)_B"}, ("input", "")),
            ),
            "MFIFB",
        ),
        Layout(
            "lytro",
            "mfif",
            {"a": "near focus", "b": "far focus"},
            (FileNames({"a": r"(?P<id>.+)[-_]A", "b": r"(?P<id>.+)[-_]B"}), Folders({"a": ("A",), "b": ("B",)})),
            "Lytro",
        ),
        Layout(
            "mefb",
            "meif",
            {"a": "under-exposed", "b": "over-exposed"},
            (FileNames({"a": r"(?P<id>.+)_A", "b": r"(?P<id>.+)_B"}, ("input", ""), scenes=True),),
            "MEFB",
        ),
        Layout(
            "sice",
            "meif",
            {"a": "darkest exposure", "b": "brightest exposure", "gt": "reference (Label)"},
            (ExposureStacks("Label", ("Dataset_Part1", "Dataset_Part2", "")),),
            "SICE",
        ),
        Layout(
            "lol",
            "restore",
            {"a": "low-light", "gt": "normal light"},
            (
                Folders(
                    {"a": ("{group}/low",), "gt": ("{group}/high", "{group}/normal")},
                    ("our485", "eval15", "Real_captured/Train", "Real_captured/Test", "Train", "Test", ""),
                ),
            ),
            "LOL",
            degradations=("lowlight:3",),
        ),  # real captures, darker than the synthetic severity 2
    )
}


def get_layout(name: str) -> Layout:
    """The layout called ``name`` (case-insensitive); an unknown name lists the known ones."""
    try:
        return LAYOUTS[name.lower()]
    except KeyError:
        raise ValueError(
            f"unknown layout {name!r}; known layouts:\n  "
            + "\n  ".join(layout.describe() for layout in LAYOUTS.values())
        ) from None


def _listing(root: Path, depth: int = 2, limit: int = 12) -> str:
    """A short picture of what a folder holds: its subfolders (two levels) and image counts."""
    lines = []

    def visit(folder: Path, level: int) -> None:
        children = sorted(folder.iterdir(), key=lambda p: _natural_key(p.name))
        images = [c for c in children if c.is_file() and c.suffix.lower() in IMAGE_SUFFIXES]
        others = [c for c in children if c.is_file() and c.suffix.lower() not in IMAGE_SUFFIXES]
        relative = folder.relative_to(root).as_posix()
        lines.append(
            f"{relative if relative != '.' else 'SRC'}/: {len(images)} images"
            + (f" (e.g. {images[0].name})" if images else "")
            + (f", {len(others)} other files" if others else "")
        )
        if level < depth:
            for child in [c for c in children if c.is_dir()][:limit]:
                visit(child, level + 1)

    visit(root, 0)
    return "\n  ".join(lines[:40]) + ("\n  ..." if len(lines) > 40 else "")


def discover(layout: Layout | str, root: str | Path, limit: int | None = None) -> list[Group]:
    """The groups of pairs of ``root`` laid out as ``layout``; ``limit``: first pairs per group.

    Raises :class:`ImageError` when the folder matches none of the layout's forms, naming what
    was expected and what was found.
    """
    layout = get_layout(layout) if isinstance(layout, str) else layout
    root = Path(root)
    if not root.is_dir():
        raise ImageError(f"{root}: not a folder (expected a {layout.describe()} download)")
    for form in layout.forms:
        groups = form.match(root)
        if groups:
            if limit is not None:
                groups = [Group(group.name, group.pairs[:limit]) for group in groups]
            return groups
    expected = "\n  ".join(form.describe() for form in layout.forms)
    raise ImageError(
        f"{root} does not match the {layout.describe()} layout.\nExpected one of:\n  {expected}\n"
        f"Found:\n  {_listing(root)}"
    )
