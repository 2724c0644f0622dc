"""``fastbert bench --train``: the time and memory of a training step, per variant.

A training step is what a fine-tuning loop does per batch: zero the gradients, forward
with labels (under ``torch.autocast`` for bfloat16/float16; float16 with a
``GradScaler``), backward, AdamW step. The model is a task model: sequence
classification (``--task cls``) or masked-language modelling (``--task mlm``).

The variants (:data:`TRAIN_VARIANTS`) are the forward bench's HF eager, HF SDPA,
``torch.compile`` of HF SDPA and fastbert, plus fastbert with gradient checkpointing
(``activation_checkpointing_enable``). They keep float32 weights (autocast computes in the
dtype under test) and are built from one task model with seeded weights and every dropout
probability set to 0, so they start from the same weights, get the same batch (with the
same labels) and, since nothing is random, should reach the same loss: the loss after the
timed steps is compared across variants (:func:`check_losses`) and a variant off by more
than :data:`LOSS_TOLERANCE` is flagged (the command then exits 1).

Timing follows the forward bench (:mod:`fastbert.bench.measure`): warm-up steps, then
the timed steps interleaved across variants, every variant taking the same number of
steps (so their losses are comparable); median and minimum are kept. Peak memory (GPU):
weights plus the allocator's peak growth over the warm-up steps (gradients, optimizer
state, activations), with the peak statistics reset per variant. Each configuration
starts from the initial weights again, with a fresh optimizer.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import itertools
import math
from dataclasses import dataclass

import torch
from torch import nn

from fastbert.bench import measure
from fastbert.bench.sweep import BenchConfig, make_batch, model_config, token_counts
from fastbert.bench.variants import BASELINES, VARIANTS, Variant, plain_forward
from fastbert.cli_args import load_checkpoint
from fastbert.configs import ARCH_NAMES
from fastbert.numerics import DTYPES

LEARNING_RATE = 1e-4
WEIGHT_DECAY = 0.01
MLM_PROBABILITY = 0.15
"""Fraction of the real tokens that carry an MLM label (the inputs are left unmasked: the
cost of a step does not depend on which ids it reads)."""

TASKS = {"cls": "AutoModelForSequenceClassification", "mlm": "AutoModelForMaskedLM"}
"""``--task`` -> the transformers auto class of its model."""

LOSS_TOLERANCE = {"float32": 1e-4, "bfloat16": 5e-2, "float16": 5e-2}
"""Largest relative difference between a variant's loss after the timed steps and the
reference variant's. One forward of two variants differs by float rounding (float32:
~1e-6 relative; half precision: ~1e-2, :mod:`fastbert.numerics`); a few AdamW steps on the
resulting gradients carry that into the weights, so the bound is looser than a forward's."""

TRAIN_MEMORY_KIND = ("cuda: model weights + torch.cuda.max_memory_allocated() growth during the warm-up training "
                     "steps (gradients, optimizer state, activations)")

# Per-device defaults: (warm-up steps, most timed steps, seconds of timed steps per variant).
MEASURE_DEFAULTS = {"cuda": (3, 20, 2.0), "cpu": (1, 5, None)}
# The default sweeps. CPU: the reference shape of the README's training figures
# (MiniLM-L6's size: hidden 384, 6 layers; batch 16 x 128 tokens). GPU: BERT-base, bf16.
TRAIN_DEFAULTS = {
    "cuda": {"models": ["bert-base"], "batches": [8, 32], "seq_lens": [512, 128], "dtypes": ["bfloat16"]},
    "cpu": {"models": ["minilm-l6"], "batches": [16], "seq_lens": [128], "dtypes": ["float32"]},
}
TRAIN_QUICK = {
    "cuda": {"models": ["bert-base"], "batches": [32], "seq_lens": [512, 128], "dtypes": ["bfloat16"]},
    "cpu": {"models": ["bert-tiny"], "batches": [8], "seq_lens": [64], "dtypes": ["float32"]},
}


def train_defaults(device_type: str, quick: bool) -> dict:
    """Default models, batches, sequence lengths and dtypes of a training run on ``"cpu"``/``"cuda"``."""
    return dict((TRAIN_QUICK if quick else TRAIN_DEFAULTS)[device_type])


# ---------------------------------------------------------------------------
# Variants
# ---------------------------------------------------------------------------


def enable_checkpointing(model: nn.Module) -> nn.Module:
    """Switch on activation (gradient) checkpointing through transformers' own call."""
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable()
    return model


def _build_fastbert_checkpointed(base, dtype, device):
    return enable_checkpointing(VARIANTS["fastbert"].build(base, dtype, device))


TRAIN_VARIANTS: dict[str, Variant] = {
    **{name: VARIANTS[name] for name in ("hf_eager", "hf_sdpa", "hf_compile", "fastbert")},
    "fastbert_ckpt": Variant("fastbert_ckpt", "fastbert.optimize(HF) + gradient checkpointing", False, False,
                             _build_fastbert_checkpointed, plain_forward),
}
"""The variants a training run may compare (``--variants``); fastbert in a CUDA graph is not one."""


# ---------------------------------------------------------------------------
# The task model and its batches
# ---------------------------------------------------------------------------


def dropout_off(config):
    """A copy of an HF config with every dropout probability set to 0 (``hidden_dropout_prob``,
    ``attention_probs_dropout_prob``, ``classifier_dropout``, DistilBERT's ``dropout``, ...)."""
    config = copy.deepcopy(config)
    for key, value in vars(config).items():
        if "dropout" in key and isinstance(value, (int, float)) and not isinstance(value, bool):
            setattr(config, key, 0.0)
    return config


def load_task_model(model: str, task: str, seed: int) -> nn.Module:
    """The ``task`` model (``"cls"``/``"mlm"``) of a named arch (seeded random weights) or of
    a checkpoint folder (its weights; a head it lacks is seeded), float32 on the CPU, with
    dropout off, in training mode."""
    import transformers

    auto = getattr(transformers, TASKS[task])
    config = dropout_off(model_config(model))
    torch.manual_seed(seed)
    if model in ARCH_NAMES:
        task_model = auto.from_config(config)
    else:
        task_model = load_checkpoint(model, "--model-dir", model_class=auto, config=config)
    for module in task_model.modules():  # also modules whose rate is not read from the config
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    return task_model.float().train()


def make_labels(task: str, config, feed: dict[str, torch.Tensor], seed: int) -> torch.Tensor:
    """Seeded labels for a batch: a class per row (``cls``; float targets for regression and
    multi-label heads), or the input ids at about :data:`MLM_PROBABILITY` of the real tokens
    and -100 elsewhere (``mlm``; at least one label per row)."""
    gen = torch.Generator().manual_seed(seed + 2)
    mask = feed["attention_mask"].cpu().bool()
    batch = mask.shape[0]
    if task == "mlm":
        pick = (torch.rand(mask.shape, generator=gen) < MLM_PROBABILITY) & mask
        first_real = torch.nn.functional.one_hot(mask.long().argmax(dim=1), mask.shape[1]).bool()
        pick |= first_real & ~pick.any(dim=1, keepdim=True)
        labels = torch.where(pick, feed["input_ids"].cpu(), torch.full_like(mask, -100, dtype=torch.long))
    elif config.num_labels == 1 or config.problem_type == "regression":
        labels = torch.randn((batch, config.num_labels) if config.num_labels > 1 else (batch,), generator=gen)
    elif config.problem_type == "multi_label_classification":
        labels = torch.randint(0, 2, (batch, config.num_labels), generator=gen).float()
    else:
        labels = torch.randint(0, config.num_labels, (batch,), generator=gen)
    return labels.to(feed["input_ids"].device)


def training_batch(config, task: str, batch: int, seq_len: int, varlen: bool, seed: int, device) -> dict:
    """The inputs of a training step: :func:`fastbert.bench.sweep.make_batch` plus ``labels``."""
    feed = make_batch(config, batch, seq_len, varlen, seed, device)
    feed["labels"] = make_labels(task, config, feed, seed)
    return feed


# ---------------------------------------------------------------------------
# One training step
# ---------------------------------------------------------------------------


class TrainStep:
    """A callable training step of ``model`` on one batch, with its own AdamW optimizer.

    Each call zeroes the gradients, runs forward (under autocast unless ``dtype`` is
    float32) and backward and steps the optimizer, and returns the loss (detached; the
    losses of every call are kept, on the device, in ``losses``).
    """

    def __init__(self, model: nn.Module, feed: dict, dtype: torch.dtype, device):
        self.model, self.feed, self.dtype = model, feed, dtype
        self.device_type = torch.device(device).type
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
        self.scaler = torch.amp.GradScaler(self.device_type) if dtype == torch.float16 else None
        self.losses: list[torch.Tensor] = []

    def _autocast(self):
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def __call__(self) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            loss = self.model(**self.feed).loss
        if self.scaler is None:
            loss.backward()
            self.optimizer.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        loss = loss.detach()
        self.losses.append(loss)
        return loss

    def release(self) -> None:
        """Free the gradients and the optimizer state."""
        self.model.zero_grad(set_to_none=True)
        self.optimizer.state.clear()
        self.losses.clear()


# ---------------------------------------------------------------------------
# One configuration
# ---------------------------------------------------------------------------

LOSS_COLUMNS = ["steps", "first_loss", "final_loss", "loss_rel_diff", "loss_ok"]


def train_result(status: str, message: str | None = None, **values) -> dict:
    """One variant's record: the forward bench's keys (:func:`measure.variant_result`) plus
    ``steps`` (taken before ``final_loss``), ``first_loss`` (the first step's, at the initial
    weights), ``final_loss`` (after the timed steps), ``loss_rel_diff`` and ``loss_ok``
    (against the reference variant's final loss)."""
    return measure.variant_result(status, message, **({k: None for k in LOSS_COLUMNS} | values))


def measure_train_config(modules: dict, feed: dict, dtype: torch.dtype, tokens, opts: measure.BenchOptions,
                         progress: measure.StageProgress | None = None) -> dict:
    """Time training steps of every variant on one batch, interleaved, every variant taking
    the same number of steps; then one more step each, untimed, whose loss is the loss after
    the timed steps. ``modules`` maps variant name to its module (in training mode) or to the
    exception its build raised. Failures are recorded per variant, never raised. A
    configuration that takes long reports its stages (:class:`measure.StageProgress`)."""
    results, prepared = {}, {}
    progress = progress or measure.StageProgress("", opts)
    for name, module in modules.items():
        if isinstance(module, Exception):
            results[name] = train_result(measure.failure_status(module), f"building the variant: {measure.failure_message(module)}")
            continue
        try:
            prepared[name] = measure.prepare_call(lambda m=module: TrainStep(m, feed, dtype, opts.device), module, opts,
                                                  name in BASELINES, grad=True, memory_kind=TRAIN_MEMORY_KIND)
        except Exception as exc:  # one variant failing must not stop the others
            results[name] = train_result(measure.failure_status(exc), measure.failure_message(exc))
            measure.release_memory(opts.device)
        progress(f"{name} built and warmed up")
    slowest = max((p.warm.estimate_s for p in prepared.values()), default=0.0)
    count = measure.repeat_count(slowest, opts.repeats, opts.max_seconds_per_variant)
    times, _, failed = measure.interleaved({n: p.forward for n, p in prepared.items()}, dict.fromkeys(prepared, count),
                                           opts.device, progress.rounds)
    for name, exc in failed.items():
        results[name] = train_result(measure.failure_status(exc), measure.failure_message(exc))
    for name, seconds in times.items():
        step = prepared[name].forward
        try:
            final = float(step())
        except Exception as exc:
            results[name] = train_result(measure.failure_status(exc), f"the step after the timed ones: {measure.failure_message(exc)}")
            continue
        result = measure.ok_result(prepared[name], seconds, None, None, feed, tokens, opts)
        result.update(steps=len(step.losses) - 1, first_loss=float(step.losses[0]), final_loss=final)
        results[name] = train_result(**result)
    for p in prepared.values():
        p.forward.release()
    del prepared
    measure.release_memory(opts.device)
    return {n: results[n] for n in modules}


def loss_reference(results: dict[str, dict]) -> str | None:
    """The variant the others' losses are held against: HF eager, else the first baseline
    measured, else the first variant measured (None when none was)."""
    ok = [n for n, r in results.items() if r["status"] == "ok"]
    baselines = [n for n in ok if n in BASELINES]
    if "hf_eager" in ok:
        return "hf_eager"
    return (baselines or ok or [None])[0]


def check_losses(results: dict[str, dict], dtype: str) -> str | None:
    """Set ``loss_rel_diff`` and ``loss_ok`` on every measured variant (in place): the
    relative difference of its final loss from the reference variant's, within
    ``LOSS_TOLERANCE[dtype]`` and finite. Returns the reference's name."""
    ref = loss_reference(results)
    if ref is None:
        return None
    ref_loss = results[ref]["final_loss"]
    for r in results.values():
        if r["status"] != "ok":
            continue
        diff = abs(r["final_loss"] - ref_loss) / max(abs(ref_loss), 1e-12)
        r["loss_rel_diff"] = diff
        r["loss_ok"] = math.isfinite(r["final_loss"]) and math.isfinite(diff) and diff <= LOSS_TOLERANCE[dtype]
    return ref


def train_entry(cfg: BenchConfig, tokens, variants: dict) -> dict:
    """One configuration's entry: the forward bench's (:func:`measure.config_entry`; the task is
    set by :class:`TrainSweepLog`) plus speedups on minima (``speedup_min``) and the loss check (``loss_reference``,
    ``loss_tolerance``, ``loss_ok``: every measured variant agrees)."""
    ref = check_losses(variants, cfg.dtype)
    entry = measure.config_entry(cfg, tokens, f"final loss of {ref}" if ref else "none", variants)
    entry.update(speedup_min=measure.speedups(variants, "min_ms"), loss_reference=ref,
                 loss_tolerance=LOSS_TOLERANCE[cfg.dtype],
                 loss_ok=all(r["loss_ok"] for r in variants.values() if r["status"] == "ok"))
    return entry


# ---------------------------------------------------------------------------
# The sweep
# ---------------------------------------------------------------------------


@dataclass
class TrainOptions(measure.BenchOptions):
    """How to measure training steps: :class:`measure.BenchOptions` plus the task."""

    task: str = "cls"


class TrainVariants:
    """Variant modules of one task model, built once each (so ``torch.compile`` compiles
    once), in training mode; :meth:`fresh` gives one back with its initial weights."""

    def __init__(self, task_model: nn.Module, device):
        self.task_model, self.device = task_model, torch.device(device)
        self.cache: dict[str, tuple[nn.Module, list[torch.Tensor]] | Exception] = {}

    def fresh(self, name: str):
        """The variant's module with the task model's initial weights, or the exception its build raised."""
        if name not in self.cache:
            try:
                module = TRAIN_VARIANTS[name].build(self.task_model, torch.float32, self.device).train()
                self.cache[name] = (module, [t.detach().clone() for t in _tensors(module)])
            except Exception as exc:
                self.cache[name] = exc
        built = self.cache[name]
        if isinstance(built, Exception):
            return built
        module, initial = built
        with torch.no_grad():
            for t, saved in zip(_tensors(module), initial):
                t.copy_(saved)
        return module


class TrainSweepLog(measure.SweepLog):
    """The forward bench's sweep log, whose every entry (also a skipped or failed one) names the task."""

    def record(self, entry: dict) -> None:
        """Set the entry's ``config["task"]``, then record it."""
        entry["config"]["task"] = self.opts.task
        super().record(entry)


def _tensors(module: nn.Module) -> list[torch.Tensor]:
    return list(module.parameters()) + list(module.buffers())


def run_train_sweep(configs: list[BenchConfig], opts: TrainOptions) -> list[dict]:
    """Measure training steps for every configuration; one entry per configuration (see
    :mod:`fastbert.bench.train_report`). Failures are recorded per variant, never raised;
    once ``opts.time_budget_s`` has passed the rest are recorded as skipped."""
    device = torch.device(opts.device)
    log = TrainSweepLog(len(configs), opts)
    if device.type == "cuda":
        measure.l2_flush_buffer(device)  # allocated before any variant's memory is tracked
    for model_name, model_cfgs in itertools.groupby(configs, key=lambda c: c.model):
        model_cfgs = list(model_cfgs)
        if log.budget_spent():
            log.skip(model_cfgs, "none")
            continue
        try:
            task_model = load_task_model(model_name, opts.task, opts.seed)
        except Exception as exc:
            log.fail(model_cfgs, exc)
            continue
        models = TrainVariants(task_model, device)
        for cfg in model_cfgs:
            if log.budget_spent():
                log.skip([cfg], "none")
                continue
            feed = training_batch(task_model.config, opts.task, cfg.batch, cfg.seq_len, cfg.varlen, opts.seed, device)
            tokens = token_counts(feed)
            progress = measure.StageProgress(cfg.label(), opts)
            modules = {}
            for name in opts.variants:
                modules[name] = models.fresh(name)
                progress(f"{name} built")
            results = measure_train_config(modules, feed, DTYPES[cfg.dtype], tokens, opts, progress)
            log.record(train_entry(cfg, tokens, results))
        del models, task_model
        if "hf_compile" in opts.variants:
            torch._dynamo.reset()  # drop this model's compiled graphs
        gc.collect()
        measure.release_memory(device)
    return log.entries
