"""Turn a sharded DeepSpeed ZeRO checkpoint into one Lightning checkpoint file.

Under DeepSpeed, Lightning saves a checkpoint as a *directory* (``last.ckpt/`` holding a ``latest``
tag file and per-rank ``*_optim_states.pt`` / ``*_model_states.pt`` shards); with ZeRO-3 no single
file holds the weights. :func:`convert_deepspeed_checkpoint` gathers the fp32 master weights from
the shards (DeepSpeed's ``zero_to_fp32``, through Lightning's wrapper that also keeps the Lightning
state: epoch, global step, hyper-parameters, callbacks) into one file that ``Trainer.predict``,
``validate`` and ``LightningModule.load_from_checkpoint`` load without DeepSpeed or the world size
it was trained with. ``python -m recipes.<name> convert-checkpoint DIR OUT`` calls it.
"""

from __future__ import annotations

from pathlib import Path

from pytorch_lightning.utilities.deepspeed import convert_zero_checkpoint_to_fp32_state_dict

DEEPSPEED_TAG_FILE = "latest"
"""DeepSpeed writes the name of the newest tag folder into this file of the checkpoint directory."""


def convert_deepspeed_checkpoint(checkpoint_dir: Path, output_file: Path) -> Path:
    """Write the consolidated fp32 checkpoint of the DeepSpeed checkpoint directory ``checkpoint_dir``.

    Args:
        checkpoint_dir: the directory Lightning saved under DeepSpeed, e.g.
            ``runs/NAME/checkpoints/last.ckpt/`` (it holds a ``latest`` file and a tag folder).
        output_file: the single-file checkpoint to write; its parent folders are created.

    Returns:
        ``output_file``.

    Raises:
        FileNotFoundError: ``checkpoint_dir`` does not exist.
        ValueError: ``checkpoint_dir`` is a plain file (already one checkpoint) or a directory
            that is not a DeepSpeed checkpoint.
    """
    checkpoint_dir = Path(checkpoint_dir)
    output_file = Path(output_file)
    if not checkpoint_dir.exists():
        raise FileNotFoundError(f"DeepSpeed checkpoint directory {checkpoint_dir} does not exist")
    if checkpoint_dir.is_file():
        raise ValueError(
            f"{checkpoint_dir} is a single-file checkpoint already (not a DeepSpeed checkpoint directory); "
            "pass it to --ckpt_path directly"
        )
    tag_file = checkpoint_dir / DEEPSPEED_TAG_FILE
    if not tag_file.is_file():
        raise ValueError(
            f"{checkpoint_dir} is not a DeepSpeed checkpoint directory: it has no '{DEEPSPEED_TAG_FILE}' file. "
            "Pass the directory Lightning saved under the DeepSpeed strategy, e.g. runs/NAME/checkpoints/last.ckpt/"
        )
    tag_dir = checkpoint_dir / tag_file.read_text().strip()
    if not any(tag_dir.glob("*optim_states.pt")):
        raise ValueError(
            f"DeepSpeed checkpoint {checkpoint_dir} names tag folder {tag_dir.name!r} in '{DEEPSPEED_TAG_FILE}', "
            f"but {tag_dir} holds no *optim_states.pt shards; copy the complete checkpoint directory from every node"
        )
    if output_file.resolve().is_relative_to(checkpoint_dir.resolve()):
        raise ValueError(
            f"write the converted checkpoint {output_file} outside the DeepSpeed directory {checkpoint_dir}"
        )
    output_file.parent.mkdir(parents=True, exist_ok=True)
    convert_zero_checkpoint_to_fp32_state_dict(checkpoint_dir, output_file)
    return output_file
