"""Peak matmul rate and memory bandwidth per device, to put achieved rates in proportion.

Dense (no sparsity) tensor-core rates and HBM bandwidth from NVIDIA's published datasheets
(H100: "NVIDIA H100 Tensor Core GPU" datasheet, SXM / PCIe / NVL columns; H200: "NVIDIA
H200 Tensor Core GPU" datasheet; A100: "NVIDIA A100 Tensor Core GPU" datasheet). The
datasheets quote FP16/BF16 "with sparsity"; the dense rate is half of that (H100/H200
SXM: 1,979 -> 989 TFLOP/s). float32 uses the non-tensor-core FP32 rate, since PyTorch's
default float32 matmul does not use TF32. These are marketing peaks at boost clock;
sustained rates are lower.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Peak:
    """Peak rates of one device: TFLOP/s per dtype and GB/s of memory bandwidth."""

    device: str
    tflops: dict  # dtype name -> TFLOP/s
    gbps: float
    source: str


_TABLE = [
    # (substring of torch.cuda.get_device_name, Peak)
    ("H200 NVL", Peak("H200 NVL", {"float16": 835.0, "bfloat16": 835.0, "float32": 60.0}, 4800.0, "NVIDIA H200 datasheet")),
    ("H200", Peak("H200 SXM", {"float16": 989.0, "bfloat16": 989.0, "float32": 67.0}, 4800.0, "NVIDIA H200 datasheet")),
    ("H100 NVL", Peak("H100 NVL", {"float16": 835.0, "bfloat16": 835.0, "float32": 60.0}, 3900.0, "NVIDIA H100 datasheet")),
    ("H100 PCIe", Peak("H100 PCIe", {"float16": 756.0, "bfloat16": 756.0, "float32": 51.0}, 2000.0, "NVIDIA H100 datasheet")),
    ("H100", Peak("H100 SXM", {"float16": 989.0, "bfloat16": 989.0, "float32": 67.0}, 3350.0, "NVIDIA H100 datasheet")),
    ("A100-SXM4-80GB", Peak("A100 SXM 80GB", {"float16": 312.0, "bfloat16": 312.0, "float32": 19.5}, 2039.0, "NVIDIA A100 datasheet")),
    ("A100 80GB PCIe", Peak("A100 PCIe 80GB", {"float16": 312.0, "bfloat16": 312.0, "float32": 19.5}, 1935.0, "NVIDIA A100 datasheet")),
    ("A100", Peak("A100 40GB", {"float16": 312.0, "bfloat16": 312.0, "float32": 19.5}, 1555.0, "NVIDIA A100 datasheet")),
]


def known_peak(device_name: str | None) -> Peak | None:
    """The table's peak for a GPU name (e.g. ``"NVIDIA H200"``), or None (CPU or unknown GPU)."""
    if not device_name:
        return None
    for key, peak in _TABLE:
        if key.lower() in device_name.lower():
            return peak
    return None


def resolve_peak(device_name: str | None, dtype: str, tflops: float | None, gbps: float | None):
    """(peak TFLOP/s or None, peak GB/s or None, where they come from) for ``dtype``:
    values passed in win over the table; None where neither knows."""
    table = known_peak(device_name)
    peak_tflops = tflops if tflops is not None else (table.tflops.get(dtype) if table else None)
    peak_gbps = gbps if gbps is not None else (table.gbps if table else None)
    if tflops is not None or gbps is not None:
        source = "given on the command line" + (f" (others from {table.source}, {table.device})" if table else "")
    elif table:
        source = f"{table.source}, {table.device}, dense"
    else:
        source = "peak unknown for this device"
    return peak_tflops, peak_gbps, source
