"""Checks of command-line arguments shared by the ``fastbert`` subcommands, and the loading
of the checkpoints they name.

Each raises ``ValueError`` with a one-line message naming the argument, before any work
starts; the command line turns that into exit code 2.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import torch


def one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's message on one line (its type when it has none), at most ``limit`` characters."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def checkpoint_dir(path: str, flag: str) -> Path:
    """``path`` as a Path; ValueError unless it is an existing directory."""
    p = Path(path)
    if not p.is_dir():
        raise ValueError(f"{flag} {path!r} is not a directory holding a Hugging Face checkpoint")
    return p


def _check_creatable(p: Path, flag: str, shown: str) -> None:
    """ValueError if ``p`` cannot become a directory: it or an ancestor is an existing non-directory."""
    for parent in (p, *p.parents):
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{flag} {shown!r}: {str(parent)!r} is a file, not a folder")
            return


def output_dir(path: str, flag: str, must_be_empty: bool = False, create: bool = True) -> Path:
    """An output folder that can be created (and is, with ``create``); with ``must_be_empty``,
    ValueError if it already holds files."""
    p = Path(path)
    _check_creatable(p, flag, path)
    if must_be_empty and p.is_dir() and any(p.iterdir()):
        raise ValueError(f"{flag} {path!r} is not empty; pass --force to overwrite the files in it")
    if not create:
        return p
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"{flag} {path!r}: cannot create the folder: {one_line(exc)}") from exc
    return p


def output_file(path: str, flag: str) -> Path:
    """An output file path whose folder exists (created now); ValueError if it is a folder."""
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"{flag} {path!r} is a folder; give a file name")
    output_dir(str(p.parent), flag)
    return p


def positive_ints(values, flag: str) -> None:
    """ValueError unless every value is a positive integer."""
    for v in [values] if isinstance(values, int) else values or ():
        if v < 1:
            raise ValueError(f"{flag} must be positive, got {v}")


def positive_number(value: float | None, flag: str) -> None:
    """ValueError unless ``value`` is None or a finite number above 0."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise ValueError(f"{flag} must be a positive number, got {value:g}")


WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json",
                "pytorch_model.bin", "pytorch_model.bin.index.json")
"""The files a ``save_pretrained`` folder holds its weights in (one of them)."""


def checkpoint_weights(path: str | Path, flag: str) -> None:
    """ValueError unless the checkpoint folder ``path`` holds weights (one of :data:`WEIGHT_FILES`):
    without them a model would load with random weights, or fail only after a run began."""
    if not any((Path(path) / name).is_file() for name in WEIGHT_FILES):
        raise ValueError(f"{flag} {str(path)!r} holds no model weights ({' or '.join(WEIGHT_FILES[::2])})")


def resolve_device(requested: str | None) -> str:
    """'cuda' when available (or requested), else 'cpu'; ValueError for an unknown device or
    CUDA without a GPU (or with fewer GPUs than the index asks for)."""
    if requested is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested not in ("cpu", "cuda") and not (requested.startswith("cuda:") and requested[5:].isdigit()):
        raise ValueError(f"device must be cpu, cuda or cuda:N, got {requested!r}")
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {requested!r} was given but torch sees no CUDA GPU")
        index = int(requested[5:] or 0)
        if index >= torch.cuda.device_count():
            raise ValueError(f"device {requested!r}: torch sees {torch.cuda.device_count()} GPU(s)")
    return requested


def checkpoint_config(path: str, flag: str):
    """The HF config of a checkpoint folder; ValueError (one line) when it is missing or invalid."""
    from transformers import AutoConfig

    if not (checkpoint_dir(path, flag) / "config.json").is_file():
        raise ValueError(f"{flag} {path!r} has no config.json: not a Hugging Face checkpoint folder")
    try:
        return AutoConfig.from_pretrained(path)
    except Exception as exc:
        raise ValueError(f"{flag} {path!r}: no valid config.json: {one_line(exc)}") from exc


def load_checkpoint(path: str, flag: str, model_class=None, **kwargs):
    """``model_class.from_pretrained(path, **kwargs)`` (default ``AutoModel``); ValueError (one
    line) when the folder holds no loadable checkpoint. transformers' own log lines are
    silenced meanwhile: callers report what matters (e.g. missing weights) in one line."""
    from transformers import AutoModel

    checkpoint_config(path, flag)
    try:
        with quiet_transformers():
            return (model_class or AutoModel).from_pretrained(path, **kwargs)
    except Exception as exc:
        raise ValueError(f"{flag} {path!r}: cannot load the checkpoint: {one_line(exc)}") from exc


@contextlib.contextmanager
def quiet_transformers():
    """Silence transformers' log lines and progress bars (restored afterwards)."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
