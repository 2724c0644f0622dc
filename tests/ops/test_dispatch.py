"""Backend selection through FASTBERT_BACKEND and the dispatch log."""

from __future__ import annotations

import pytest
import torch

from fastbert.ops import dispatch, linear, record_dispatch


def test_cpu_tensors_use_reference_by_default(monkeypatch):
    monkeypatch.delenv("FASTBERT_BACKEND", raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert dispatch.select_backend(torch.device("cpu")) == "torch"
    with record_dispatch() as log:
        linear(torch.randn(2, 3), torch.randn(4, 3))
    assert log == [("linear", "torch")]


def test_forced_backend(monkeypatch):
    monkeypatch.setenv("FASTBERT_BACKEND", "torch")
    assert dispatch.select_backend(torch.device("cuda")) == "torch"
    if dispatch.triton_available():
        monkeypatch.setenv("FASTBERT_BACKEND", "triton")
        assert dispatch.select_backend(torch.device("cpu")) == "triton"


def test_invalid_backend_is_an_error(monkeypatch):
    monkeypatch.setenv("FASTBERT_BACKEND", "cuda")
    with pytest.raises(ValueError, match="FASTBERT_BACKEND"):
        dispatch.select_backend(torch.device("cpu"))


def test_op_without_triton_kernel_runs_reference(monkeypatch):
    calls = []
    dispatch.register("_probe_op", "torch")(lambda: calls.append("torch"))
    for forced in ("torch", "triton") if dispatch.triton_available() else ("torch",):
        monkeypatch.setenv("FASTBERT_BACKEND", forced)
        with record_dispatch() as log:
            dispatch.implementation("_probe_op", torch.device("cpu"))()
        assert log == [("_probe_op", "torch")]
    assert calls == ["torch"] * len(calls) and calls
