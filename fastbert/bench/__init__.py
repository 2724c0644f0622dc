"""Benchmarking and profiling: ``fastbert bench`` and ``fastbert profile``.

One job per module:

- :mod:`sweep`: what is measured (models, shapes, the batches every variant is fed);
- :mod:`variants`: the ways of running a model that are compared (HF eager, HF SDPA,
  ``torch.compile``, fastbert, fastbert in a CUDA graph);
- :mod:`measure`: timers, peak memory, failures, one configuration, the sweep loop;
- :mod:`report`: the table, JSON, CSV and plots of a run, and where it was measured;
- :mod:`profile`: one configuration under ``torch.profiler``, per class of work, against
  counted FLOPs/bytes and the device's peaks (tables, roofline);
- :mod:`command`: the two commands, from parsed arguments to a run and an exit code.

How numbers are compared with the reference is :mod:`fastbert.numerics`, shared with
``fastbert check``.
"""
