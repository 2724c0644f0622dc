"""Benchmarking and profiling: ``fastbert bench`` and ``fastbert profile``.

One job per module: :mod:`sweep` (which configurations), :mod:`inputs` (the batches),
:mod:`timing` (timers), :mod:`memory` (peak memory), :mod:`runners` (the variants: HF
eager, HF SDPA, torch.compile, fastbert, fastbert with CUDA graphs), :mod:`errors` (oom or
error), :mod:`measure` (one configuration, variants timed interleaved), :mod:`run` (the
sweep loop), :mod:`metadata` (versions and device), :mod:`report` (table, JSON, CSV),
:mod:`plots` (PNG), :mod:`command` (the ``bench`` command); for profiling
:mod:`profiling` (torch.profiler run and per-kernel rows), :mod:`opcost` (counted FLOPs and bytes), :mod:`peaks` (device peak rates),
:mod:`opclass` (op -> class of work), :mod:`profile_report` (tables), :mod:`roofline` (PNG)
and :mod:`profile_command` (the ``profile`` command).
"""
