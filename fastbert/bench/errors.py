"""How a failed variant is recorded: out-of-memory ("oom") or any other error ("error")."""

from __future__ import annotations

import torch


def is_out_of_memory(exc: BaseException) -> bool:
    """True for ``torch.cuda.OutOfMemoryError`` and RuntimeErrors saying "out of memory"."""
    oom_type = getattr(torch.cuda, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def failure_status(exc: BaseException) -> str:
    """``"oom"`` or ``"error"``."""
    return "oom" if is_out_of_memory(exc) else "error"


def failure_message(exc: BaseException, limit: int = 500) -> str:
    """``Type: message`` on one line, at most ``limit`` characters."""
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def release_memory(device) -> None:
    """Return cached CUDA blocks after a failure so the next variant starts clean."""
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
