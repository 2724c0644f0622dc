"""Recovery after pruning: distill the dense teacher into the pruned student, masks kept.

:class:`Distiller` computes, on the same batch,

``loss = hidden_weight * mean_l ||h_s^l - h_t^l||^2 / ||h_t^l||^2``  (hidden states of the
chosen layers, real tokens only, relative so the scale of the model does not matter)
``+ pooled_weight * mean(1 - cos(pool(h_s), pool(h_t)))``  (mean-pooled last hidden states over
real tokens, as sentence-embedding models pool them)
``+ logits_weight * T^2 * KL(softmax(z_t / T) || softmax(z_s / T))``  (task models' logits)
``+ task_weight * the student's own loss``  (when the batch has labels).

The student runs with its dropout off unless ``dropout=True``: recovery reconstructs a
deterministic teacher, and dropout noise then costs more than it regularizes (all-MiniLM-L6-v2,
50 % unstructured, 100 steps: with dropout the held-out cosine fell below the one-shot
model's, without it rose; ``benchmarks/recovery_ablation.py``).

Plain loop: ``loss = distiller.loss(batch); loss.backward(); optimizer.step()``.
HF ``Trainer``: ``Trainer(model=student, callbacks=[distiller.trainer_callback()], ...)``;
the callback hooks the student's forward during training so the loss the Trainer reads is
the distillation loss (evaluation keeps the model's own loss).

Pruned weights stay zero throughout: :mod:`fastbert.prune.apply` zeroes their gradients
and re-applies every mask after each optimizer step, whichever loop runs.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

LAYER_CHOICES = ("all", "last")


class Distiller:
    """Distillation loss of a pruned ``student`` against a dense ``teacher`` (see the module docstring).

    ``layers``: ``"all"`` (every layer's hidden states and the embeddings output) or
    ``"last"``. The teacher is put in eval mode and runs without gradients. ``dropout``: run
    the student's dropout during :meth:`loss` (and under :meth:`trainer_callback`).
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, hidden_weight: float = 1.0,
                 logits_weight: float = 0.0, task_weight: float = 0.0, temperature: float = 2.0,
                 layers: str = "all", pooled_weight: float = 0.0, dropout: bool = False) -> None:
        for name, value in (("hidden_weight", hidden_weight), ("logits_weight", logits_weight),
                            ("task_weight", task_weight), ("pooled_weight", pooled_weight)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{name} must be a non-negative number, got {value!r}")
        if hidden_weight == 0 and logits_weight == 0 and task_weight == 0 and pooled_weight == 0:
            raise ValueError("at least one of hidden_weight, pooled_weight, logits_weight, task_weight must be positive")
        if not isinstance(dropout, bool):
            raise TypeError(f"dropout must be True or False, got {dropout!r}")
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or temperature <= 0:
            raise ValueError(f"temperature must be a positive number, got {temperature!r}")
        if layers not in LAYER_CHOICES:
            raise ValueError(f"layers must be one of {LAYER_CHOICES}, got {layers!r}")
        if not isinstance(student, nn.Module) or not isinstance(teacher, nn.Module):
            raise TypeError("student and teacher must be nn.Modules (the pruned model and the dense one)")
        if student is teacher:
            raise ValueError("student and teacher are the same model: distill from a dense copy (copy.deepcopy "
                             "before pruning)")
        self.student, self.teacher = student, teacher.eval()
        self.hidden_weight, self.logits_weight, self.task_weight = hidden_weight, logits_weight, task_weight
        self.temperature, self.layers = temperature, layers
        self.pooled_weight, self.dropout = pooled_weight, dropout

    def loss(self, batch: Mapping) -> torch.Tensor:
        """Run the student on ``batch`` (a dict of model inputs) and return the distillation loss."""
        if not isinstance(batch, Mapping):
            raise TypeError(f"batch must be a dict of model inputs, got {type(batch).__name__}")
        inputs = dict(batch)
        if self.task_weight == 0:
            inputs.pop("labels", None)
        was_training = self.student.training
        if not self.dropout:
            self.student.eval()  # dropout off; gradients still flow
        try:
            output = self.student(**inputs, output_hidden_states=True)
        finally:
            self.student.train(was_training)
        return self.compute(batch, output)

    def compute(self, batch: Mapping, student_output) -> torch.Tensor:
        """The loss for a student output already computed on ``batch`` (with hidden states)."""
        teacher_inputs = {k: v for k, v in batch.items() if k not in ("labels", "output_hidden_states")}
        with torch.no_grad():
            teacher_output = self.teacher(**teacher_inputs, output_hidden_states=True)
        total = 0.0
        if self.hidden_weight:
            total = total + self.hidden_weight * self._hidden_loss(batch, student_output, teacher_output)
        if self.pooled_weight:
            total = total + self.pooled_weight * self._pooled_loss(batch, student_output, teacher_output)
        if self.logits_weight:
            total = total + self.logits_weight * self._logits_loss(student_output, teacher_output)
        if self.task_weight:
            task = getattr(student_output, "loss", None)
            if task is None:
                raise ValueError("task_weight > 0 needs batches with labels (the student returned no loss)")
            total = total + self.task_weight * task
        return total

    def _hidden_loss(self, batch, student_output, teacher_output) -> torch.Tensor:
        hs, ht = student_output.hidden_states, teacher_output.hidden_states
        if hs is None or ht is None or len(hs) != len(ht):
            raise ValueError("student and teacher must return the same number of hidden states")
        pairs = list(zip(hs, ht)) if self.layers == "all" else [(hs[-1], ht[-1])]
        mask = batch.get("attention_mask")
        weights = None if mask is None else (mask != 0).to(hs[-1].dtype)[..., None]
        losses = []
        for s, t in pairs:
            diff, ref = (s - t).pow(2), t.pow(2)
            if weights is not None:
                diff, ref = diff * weights, ref * weights
            losses.append(diff.sum() / ref.sum().clamp_min(1e-12))
        return torch.stack(losses).mean()

    def _pooled_loss(self, batch, student_output, teacher_output) -> torch.Tensor:
        hs, ht = student_output.hidden_states, teacher_output.hidden_states
        if hs is None or ht is None:
            raise ValueError("pooled_weight > 0 needs models that return hidden states")
        mask = batch.get("attention_mask")
        weights = torch.ones_like(hs[-1][..., :1]) if mask is None else (mask != 0).to(hs[-1].dtype)[..., None]
        pooled_s = (hs[-1] * weights).sum(-2) / weights.sum(-2).clamp_min(1)
        pooled_t = (ht[-1] * weights).sum(-2) / weights.sum(-2).clamp_min(1)
        return (1 - F.cosine_similarity(pooled_s, pooled_t, dim=-1)).mean()

    def _logits_loss(self, student_output, teacher_output) -> torch.Tensor:
        zs, zt = getattr(student_output, "logits", None), getattr(teacher_output, "logits", None)
        if zs is None or zt is None:
            raise ValueError("logits_weight > 0 needs task models that return logits")
        T = self.temperature
        # float64: the KL of two close distributions is a small difference of large terms
        log_p = F.log_softmax(zs.double() / T, dim=-1).flatten(0, -2)
        log_q = F.log_softmax(zt.double() / T, dim=-1).flatten(0, -2)
        return (F.kl_div(log_p, log_q, reduction="batchmean", log_target=True) * T * T).to(zs.dtype)

    def trainer_callback(self):
        """A ``transformers.TrainerCallback`` making the Trainer optimize this distillation loss.

        From ``on_train_begin`` to ``on_train_end`` the student's forward, in training mode
        with gradients on, also runs the teacher and replaces ``output.loss`` with
        :meth:`compute`'s loss (the student's dropout off unless ``dropout=True``).
        """
        from transformers import TrainerCallback

        distiller = self

        class _DistillationCallback(TrainerCallback):
            handles: list = []

            def on_train_begin(self, args, state, control, **kwargs):
                self.handles = distiller.attach()

            def on_train_end(self, args, state, control, **kwargs):
                for handle in self.handles:
                    handle.remove()
                self.handles = []

        return _DistillationCallback()

    def attach(self) -> list:
        """Hook the student's forward (see :meth:`trainer_callback`); returns the hook handles to remove."""
        seen = {}

        def before(module, args, kwargs):
            if module.training and torch.is_grad_enabled():
                seen["batch"] = dict(kwargs)
                if not self.dropout:
                    module.eval()  # back in train mode after the forward
                    seen["restore"] = True
                return args, dict(kwargs, output_hidden_states=True)
            seen.pop("batch", None)
            return None

        def after(module, args, kwargs, output):
            if seen.pop("restore", False):
                module.train()
            batch = seen.pop("batch", None)
            if batch is None:
                return None
            output["loss"] = self.compute(batch, output)
            return output

        return [self.student.register_forward_pre_hook(before, with_kwargs=True),
                self.student.register_forward_hook(after, with_kwargs=True)]
