"""The build gate covers the LayerNorm, embeddings, linear and activation kernels.

Registration is checked for every kernel; compiling is checked for one representative
(variant, config) per kernel and architecture, the heaviest of each (the full sweep is
``python -m fastbert.kernels.compile_check``, minutes on a laptop). Compiling needs no
GPU: the gate spawns workers with ``TRITON_INTERPRET`` unset.
"""

from __future__ import annotations

import pytest

from fastbert.kernels import compile_check, registry

FAMILIES = {
    "fastbert.kernels.layernorm": ["layernorm_fwd", "layernorm_bwd", "layernorm_bwd_reduce"],
    "fastbert.kernels.embeddings": ["embeddings_fwd", "embeddings_bwd"],
    "fastbert.kernels.linear": ["linear_fwd"],
    "fastbert.kernels.activations": ["activation_fwd", "activation_bwd"],
}


def test_every_kernel_is_registered_with_configs_for_both_archs():
    compile_check.load_kernel_modules()
    for module, names in FAMILIES.items():
        for name in names:
            entry = registry.get(name)
            assert entry.module == module
            for variant in entry.variants:
                for arch in registry.ARCHS:
                    assert entry.configs_for(arch, variant), (name, variant.label, arch)
    matrix = [v for v in registry.get("linear_fwd").variants if v.matrix]
    labels = " ".join(v.label for v in matrix)
    assert "fp16" in labels and "bf16" in labels and "dX" in labels and "dW" in labels  # fwd and both bwd layouts


def _job(name: str, label_part: str, arch: int, config: int = 0) -> compile_check.Job:
    entry = registry.get(name)
    vi = next(i for i, v in enumerate(entry.variants) if label_part in v.label)
    return compile_check.Job(entry.module, name, vi, config, arch)


@pytest.mark.slow
def test_representatives_compile_without_spills_and_with_matrix_instructions():
    compile_check.load_kernel_modules()
    jobs = [
        _job("linear_fwd", "fp16 fwd 768->3072 bias+gelu save_pre", 90),
        _job("linear_fwd", "fp16 fwd 768->3072 bias+gelu save_pre", 80),
        _job("layernorm_bwd", "bf16 hidden=1024", 90),
        _job("layernorm_fwd", "bf16 hidden=4096", 80),
        _job("embeddings_bwd", "fp16 hidden=768", 90),
        _job("activation_bwd", "bf16", 80),
    ]
    rows = compile_check.run_jobs(jobs, workers=2)
    table = compile_check.format_table(rows)
    for row in rows:
        assert row["status"] == "ok", table
        assert row["local"] == 0, table
    assert rows[0]["matrix"] == "wgmma" or "wgmma" in rows[0]["matrix"].split("+"), table
    assert "mma" in rows[1]["matrix"].split("+"), table
