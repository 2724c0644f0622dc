"""Triton kernels and their thin launchers: pure functions on tensors, no autograd.

Modules here are imported on demand (``fastbert.kernels.attention`` ...); this
package itself imports nothing, so ``fastbert`` stays importable without Triton.
Every kernel is defined through :func:`fastbert.kernels.registry.kernel`, which
puts it under the ahead-of-time build gate (:mod:`fastbert.kernels.compile_check`).
A few modules here import no Triton and are read by the ops too: :mod:`dtypes` (the
dtype table), :mod:`dropout` (dropout arguments), :mod:`launch` (launch helpers),
:mod:`linear_table` and :mod:`sparse_table` (the measured tables' lookups).
"""
