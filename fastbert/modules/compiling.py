"""What a ``torch.compile`` trace in progress can hold: whether the encoder may branch with ``torch.cond``.

Under ``torch.compile`` the encoder chooses the packed or the padded path on the device with
``torch.cond``, both branches in one graph. Two things a trace needs for that:

- it must capture the packed path's data-dependent token count
  (:func:`fastbert.ops.padding.packing_traceable`: ``fullgraph=True``);
- the Python floats the layers read (LayerNorm ``eps``, dropout probabilities) must be
  constants. With ``dynamic=True`` (and ``torch._dynamo.config.specialize_float`` False, its
  default) Dynamo traces every float as a symbolic value, and so does automatic dynamic
  shapes for a float whose value changed between calls (``p = 0`` set on a dropout after a
  compiled call); torch 2.13's ``torch.cond`` takes no symbolic float into its branches (its
  operands may only be tensors and ints; a float first read inside one branch cannot even be
  read in the other, pytorch#193194).

When either fails, the encoder compiles the padded path alone: HF's numbers at every
position, no branch.
"""

from __future__ import annotations

import torch
from torch._dynamo.comptime import comptime

from fastbert.ops.padding import packing_traceable


def symbolic_floats(module: torch.nn.Module) -> bool:
    """Whether the trace in progress holds any public Python float attribute of ``module`` or
    its submodules (``eps``, ``p``, ...) as a symbolic value (every float with ``dynamic=True``;
    a float whose value changed between compiled calls, by automatic dynamic shapes). Read in
    the root graph, before any branch, at trace time only; outside a trace, False. Private
    names (``nn.Module``'s own bookkeeping: hooks, parameters) are skipped: they hold no
    float, and reading them all costs trace time."""
    if not torch.compiler.is_compiling():
        return False
    for sub in module.modules():
        for name in vars(sub):
            if name.startswith("_") or name == "training":
                continue
            value = getattr(sub, name)
            if isinstance(value, float) and _traced_as_symbolic(value):
                return True
    return False


def branching_traceable(module: torch.nn.Module) -> bool:
    """Whether the trace in progress can hold the encoder's ``torch.cond`` between the packed and
    the padded path (module docs): the packed path's unbacked size, and constant floats."""
    return packing_traceable() and not symbolic_floats(module)


# Dynamo shows a symbolic float to the traced code as a float (isinstance and type say
# float): only its own view of the value tells. comptime runs at trace time with that view
# and leaves the answer here; _trace_time_answer hands it to the traced code as a constant.
_ANSWER = [False]


@torch._dynamo.assume_constant_result
def _trace_time_answer() -> bool:
    return _ANSWER[0]


def _traced_as_symbolic(value) -> bool:
    """Whether Dynamo traces ``value`` (a local here) as a symbolic value, not a constant."""

    def look(ctx):
        _ANSWER[0] = not ctx.get_local("value").is_python_constant()

    comptime(look)
    return _trace_time_answer()
