"""Sparsity per matrix role: ``fastbert.prune(model, {"attention": 0.15, "ffn": 0.675}, ...)``.

A layer's four projections are not equally sensitive: on all-MiniLM-L6-v2, 32 x 32 tiles
removed from the attention projections cost more than the same share removed from the FFN
(``benchmarks/block_allocation.py`` measures one-shot block pruning at 50 % overall with
different shares). A mapping gives each role its own fraction; :func:`split_sparsity` finds
the FFN's share for an overall target.

Keys: the roles ``"attention.qkv"``, ``"attention.output"``, ``"ffn.in"``, ``"ffn.out"``,
or the groups ``"attention"`` (both attention projections) and ``"ffn"`` (both FFN
projections). Every role needs exactly one value.
"""

from __future__ import annotations

from collections.abc import Mapping

from fastbert.prune.checks import check_fraction
from fastbert.prune.targets import LAYER_MATRICES, encoder_of

ROLES = tuple(LAYER_MATRICES.values())
GROUPS = {"attention": ("attention.qkv", "attention.output"), "ffn": ("ffn.in", "ffn.out")}
ROLE_PATTERNS = ("unstructured", "block")


def role_sparsities(sparsity: Mapping) -> dict[str, float]:
    """Each role's fraction from a mapping of roles and groups; TypeError/ValueError for a bad one."""
    per_role: dict[str, float] = {}
    for key, value in sparsity.items():
        if key not in ROLES and key not in GROUPS:
            raise ValueError(f"sparsity keys must be roles {ROLES} or groups {tuple(GROUPS)}, got {key!r}")
        check_fraction(f"sparsity[{key!r}]", value)
        for role in GROUPS.get(key, (key,)):
            if role in per_role:
                raise ValueError(f"sparsity gives {role!r} twice (a group and one of its roles?)")
            per_role[role] = float(value)
    missing = [role for role in ROLES if role not in per_role]
    if missing:
        raise ValueError(f"sparsity has no value for {missing}: give every role, or the groups 'attention' and 'ffn'")
    return per_role


def check_role_sparsity(sparsity: Mapping, pattern: str, scope: str) -> dict[str, float]:
    """:func:`role_sparsities`, and ValueError where a mapping means nothing (structured or N:M
    patterns, whose unit is not a weight; the global scope, which ranks all matrices together)."""
    if pattern not in ROLE_PATTERNS:
        raise ValueError(f"a sparsity per role is for the {ROLE_PATTERNS} patterns, not {pattern!r}")
    if scope != "layer":
        raise ValueError("a sparsity per role prunes each matrix to its role's fraction: use scope='layer' "
                         "(fastbert prune: --scope layer)")
    return role_sparsities(sparsity)


def parse_sparsity(text: str) -> float | dict[str, float]:
    """``fastbert prune --sparsity``: ``"0.5"``, or a fraction per role or group such as
    ``"attention=0.25,ffn=0.625"`` (ValueError for anything else; values are checked by the caller)."""
    def number(value: str, what: str) -> float:
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"--sparsity {what} must be a number, got {value!r}") from None

    if "=" not in text:
        return number(text.strip(), "")
    per_role = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--sparsity takes a fraction or ROLE=FRACTION,... (e.g. attention=0.25,ffn=0.625), "
                             f"got {text!r}")
        key = key.strip()
        if key in per_role:
            raise ValueError(f"--sparsity gives {key!r} more than once (got {text!r}): give each role or group once")
        per_role[key] = number(value.strip(), f"for {key!r}")
    return per_role


def per_target(chosen, sparsity) -> dict[str, float]:
    """Each chosen matrix's fraction (by name): ``sparsity`` itself, or its role's value from a mapping."""
    if isinstance(sparsity, Mapping):
        per_role = role_sparsities(sparsity)
        return {t.name: per_role[t.role] for t in chosen}
    return {t.name: float(sparsity) for t in chosen}


def overall_sparsity(model, per_role: Mapping[str, float]) -> float:
    """The fraction of all projection weights ``per_role`` removes (roles weighted by their size)."""
    sizes = role_sizes(model)
    return sum(per_role[r] * n for r, n in sizes.items()) / sum(sizes.values())


def role_sizes(model) -> dict[str, int]:
    """Weights per role in one layer of ``model`` (a fastbert model or encoder), from its config."""
    cfg = encoder_of(model).config
    h, i = cfg.hidden_size, cfg.intermediate_size
    return {"attention.qkv": 3 * h * h, "attention.output": h * h, "ffn.in": i * h, "ffn.out": h * i}


def split_sparsity(model, overall: float, attention: float) -> dict[str, float]:
    """``{"attention": attention, "ffn": f}`` with ``f`` chosen so that ``overall`` of all projection
    weights go (ValueError if the FFN would need 100 % or more, or less than 0)."""
    check_fraction("overall", overall)
    check_fraction("attention", attention)
    sizes = role_sizes(model)
    att = sizes["attention.qkv"] + sizes["attention.output"]
    ffn = sizes["ffn.in"] + sizes["ffn.out"]
    f = (overall * (att + ffn) - attention * att) / ffn
    if not 0.0 <= f < 1.0:
        raise ValueError(f"attention at {attention:.0%} leaves the FFN {f:.1%} to reach {overall:.0%} overall: "
                         "not a fraction in [0, 1)")
    return {"attention": attention, "ffn": f}
