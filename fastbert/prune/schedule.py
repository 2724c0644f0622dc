"""Gradual pruning on a cubic schedule (Zhu & Gupta), for plain loops and HF's Trainer.

Each pruning event runs :func:`fastbert.prune.prune` at the schedule's sparsity with the
pruner's method: magnitude, or Wanda/SparseGPT scores from the calibration batches
(recomputed at every event on the model as it is then)."""

from __future__ import annotations

import numbers
from collections.abc import Mapping

from fastbert.prune.calibrated import CalibratedOptions
from fastbert.prune.calibration import check_calibration
from fastbert.prune.checks import CALIBRATED, METHODS, check_block_size, check_fraction, check_scope, default_scope
from fastbert.prune.pruning import prune
from fastbert.prune.roles import check_role_sparsity
from fastbert.prune.targets import targets


def cubic_sparsity(step: int, final: float, start: int, end: int, initial: float = 0.0) -> float:
    """Target sparsity at ``step``: ``initial`` before ``start``, ``final`` after ``end``, and
    ``final + (initial - final) * (1 - progress)**3`` in between (fast early, gentle late)."""
    if end <= start:
        raise ValueError(f"end ({end}) must be after start ({start})")
    if step <= start:
        return initial
    if step >= end:
        return final
    progress = (step - start) / (end - start)
    return final + (initial - final) * (1.0 - progress) ** 3


class GradualPruner:
    """Prunes a fastbert model a little more every ``frequency`` steps until ``final_sparsity``.

    Plain loop: call :meth:`step` after each ``optimizer.step()``. HF Trainer: pass
    ``pruner.trainer_callback()`` in ``callbacks``. Each pruning event runs
    :func:`fastbert.prune.prune` with the schedule's sparsity (masks only grow), with
    ``method`` ``"magnitude"``, or ``"wanda"``/``"sparsegpt"`` on ``calibration`` (model
    input dicts, as for :func:`fastbert.prune.prune`; ``options`` likewise).
    ``scope`` defaults to ``"layer"`` as for :func:`fastbert.prune.prune`; with ``"global"``
    an event whose threshold would remove a matrix whole raises ValueError (no weight changed).
    ``final_sparsity`` may be a fraction per matrix role, as for :func:`fastbert.prune.prune`
    (``{"attention": 0.25, "ffn": 0.625}``): each role follows its own cubic schedule.
    """

    def __init__(self, model, final_sparsity: float | Mapping[str, float], start_step: int, end_step: int, frequency: int = 10,
                 pattern: str = "unstructured", scope: str | None = None, block_size: int = 32, layers=None,
                 method: str = "magnitude", calibration=None, options: CalibratedOptions | None = None):
        """Every argument is checked here, before any training step (ValueError/TypeError)."""
        if pattern not in ("unstructured", "block"):
            raise ValueError(f"gradual pruning supports the 'unstructured' and 'block' patterns, got {pattern!r}")
        scope = default_scope(method) if scope is None else scope
        check_scope(scope)
        if isinstance(final_sparsity, Mapping):
            final_sparsity = check_role_sparsity(final_sparsity, pattern, scope)
        else:
            check_fraction("final_sparsity", final_sparsity)
        check_block_size(pattern, block_size)
        for name, value in (("start_step", start_step), ("end_step", end_step), ("frequency", frequency)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        if frequency < 1:
            raise ValueError(f"frequency must be >= 1, got {frequency}")
        cubic_sparsity(start_step, 0.0, start_step, end_step)  # validates the window
        targets(model, layers)  # a fastbert model, and valid layer indices
        self.model, self.final, self.start, self.end, self.frequency = model, final_sparsity, start_step, end_step, frequency
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        self.options = dict(pattern=pattern, scope=scope, block_size=block_size, layers=layers, method=method)
        if method in CALIBRATED:
            if options is not None and not isinstance(options, CalibratedOptions):
                raise TypeError(f"options must be a fastbert.prune.CalibratedOptions, got {type(options).__name__}")
            self.options.update(calibration=check_calibration(calibration, method), options=options, progress=False)
        elif calibration is not None or options is not None:
            raise ValueError(f"calibration and options are for the calibrated methods {CALIBRATED}, not {method!r}")
        self.step_count = 0
        self.last_report = None

    def step(self):
        """Advance one optimizer step; prune when the schedule says so. Returns the report or None."""
        self.step_count += 1
        due = (self.step_count - self.start) % self.frequency == 0 or self.step_count == self.end
        if self.step_count < self.start or self.step_count > self.end or not due:
            return None
        if isinstance(self.final, dict):
            target = {role: cubic_sparsity(self.step_count, final, self.start, self.end)
                      for role, final in self.final.items()}
        else:
            target = cubic_sparsity(self.step_count, self.final, self.start, self.end)
        self.last_report = prune(self.model, target, **self.options)
        return self.last_report

    def trainer_callback(self):
        """A ``transformers.TrainerCallback`` that calls :meth:`step` at the end of every step."""
        from transformers import TrainerCallback

        pruner = self

        class _GradualPruningCallback(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                pruner.step()

        return _GradualPruningCallback()
