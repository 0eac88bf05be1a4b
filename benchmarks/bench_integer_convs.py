"""Convolutions of spikes as exact integer arithmetic, against the simulator's float32 kernel:
a measurement behind issue 17's simulator goal at batch 1 (not a code path of snncc).

Spikes are 0/1, exact in uint8; a float32 weight is split into three int8 planes with per
output-channel scales (``w = s1 q1 + s2 q2 + s3 q3 + r``, ``s1 = max|w_c| / 127``,
``s_{k+1} = s_k / 254``, ``|r| <= max|w_c| / (2 * 127 * 254**2)``, about float32's rounding of
the channel's largest weight), and each plane is one oneDNN integer convolution (u8 x s8 into
exact int32 sums; VNNI multiplies four times as many 8-bit pairs per instruction as float32
ones), scaled into float32 and added into one output (oneDNN's sum post-op). Every spike
convolution of the 15M model at ``--size`` (T = 4, batch 1, spikes drawn at rate 0.3) is timed
both ways, one thread, best of ``--repeat``, and compared with float64 (largest absolute
difference of each). Run::

    .venv/bin/python benchmarks/bench_integer_convs.py [--size 224] [--append benchmarks/RESULTS.md]
"""

from __future__ import annotations

import argparse
import platform
from collections import defaultdict

import numpy as np
import torch
import torch.nn.functional as F

from snncc import ir
from snncc.frontends.tracer import trace
from snncc.pipeline import for_target
from snncc.simulator import _onednn_conv

from bench_onnx_speed import models  # noqa: E402 (benchmarks/ is sys.path[0])
from common import append, best_of, load_average, section  # noqa: E402

T = 4


def weight_planes(w: torch.Tensor, planes: int = 3):
    """[(int8 plane, float64 per-channel scale)] with w = sum of scale * plane + rest."""
    w = w.double()
    view = (-1, *[1] * (w.dim() - 1))
    s = (w.reshape(len(w), -1).abs().amax(1) / 127).float().double()
    s = torch.where(s > 0, s, torch.ones_like(s))
    out, rest = [], w
    for _ in range(planes):
        q = torch.round(rest / s.view(view)).clamp(-127, 127)
        out.append((q.to(torch.int8), s))
        rest = rest - q * s.view(view)
        s = (s / 254).float().double()
    return out


def integer_conv(n: ir.Conv2d, w: torch.Tensor, b: torch.Tensor | None, shape):
    """The convolution of uint8 spikes of ``shape`` by the planes, smallest first."""
    pad, stride, dil = list(n.padding), list(n.stride), list(n.dilation)
    if isinstance(n, ir.Conv1d):
        w, pad, stride, dil = w.unsqueeze(2), [0, *pad], [1, *stride], [1, *dil]
    planes = weight_planes(w)[::-1]
    packed = [torch.ops.onednn.qconv_prepack(q, s, 1.0, 0, stride, pad, dil, n.groups,
                                             list(shape)) for q, s in planes]
    zp = torch.zeros(len(w), dtype=torch.int64)
    conv = torch.ops.onednn.qconv2d_pointwise

    def kernel(x):
        y = conv(x, 1.0, 0, packed[0], planes[0][1], zp, None, stride, pad, dil, n.groups,
                 1.0, 0, torch.float32, "none", [], "")
        for i in (1, 2):
            y = conv.binary(x, 1.0, 0, packed[i], planes[i][1], zp, y, b if i == 2 else None,
                            stride, pad, dil, n.groups, 1.0, 0, torch.float32, 1.0, 0, "sum",
                            1.0, "none", [], "")
        return y
    return kernel


def measure(size: int, repeat: int) -> list[dict]:
    _, model, make_input = list(models(size))[1]
    graph = for_target("sim", log=lambda s: None).run(
        trace(model, make_input(2), T=T, static=True, name="meta"))
    spikes = {n.name for n in graph.topological_order() if n.kind is ir.Kind.SPIKE}
    gen = torch.Generator().manual_seed(0)
    rows = []
    for n in graph.topological_order():
        if not (isinstance(n, ir.Conv2d) and n.inputs[0] in spikes):
            continue
        w = torch.from_numpy(np.asarray(n.weight, dtype=np.float32))
        b = None if n.bias is None else torch.from_numpy(np.asarray(n.bias, dtype=np.float32))
        x = (torch.rand((T, *graph[n.inputs[0]].shape), generator=gen) < 0.3).float()
        x4 = (x.unsqueeze(2) if isinstance(n, ir.Conv1d) else x).contiguous(
            memory_format=torch.channels_last)
        xq = x4.to(torch.uint8)
        fp32, intq = _onednn_conv(n, w, b), integer_conv(n, w, b, xq.shape)
        conv = F.conv1d if isinstance(n, ir.Conv1d) else F.conv2d
        exact = conv(x.double(), w.double(), None if b is None else b.double(), n.stride,
                     n.padding, n.dilation, n.groups)
        y_int = intq(xq)
        y_int = y_int.squeeze(2) if isinstance(n, ir.Conv1d) else y_int
        kind = (f"{'x'.join(map(str, w.shape[2:]))}{' 1-D' if w.dim() == 3 else ''}"
                f"{' depthwise' if n.groups > 1 else ''}, {w.shape[1] * n.groups} in")
        rows.append(dict(kind=kind, fp32=best_of(lambda: fp32(x), repeat),
                         int8=best_of(lambda: intq(xq), repeat),
                         err_fp32=float((fp32(x).double() - exact).abs().max()),
                         err_int8=float((y_int.double() - exact).abs().max())))
    return rows


def table(rows: list[dict]) -> str:
    groups = defaultdict(list)
    for r in rows:
        groups[r["kind"]].append(r)
    lines = ["| spike convolutions | layers | oneDNN float32 (ms) | int8 planes (ms) | "
             "float32 / int8 | max abs diff to float64 (float32, int8) |",
             "|---|---:|---:|---:|---:|---|"]
    for kind, rs in groups.items():
        a, c = sum(r["fp32"] for r in rs) * 1e3, sum(r["int8"] for r in rs) * 1e3
        lines.append(f"| {kind} | {len(rs)} | {a:.1f} | {c:.1f} | **{a / c:.2f}x** | "
                     f"{max(r['err_fp32'] for r in rs):.1e}, "
                     f"{max(r['err_int8'] for r in rs):.1e} |")
    a, c = sum(r["fp32"] for r in rows) * 1e3, sum(r["int8"] for r in rows) * 1e3
    best = sum(min(r["fp32"], r["int8"]) for r in rows) * 1e3
    lines.append(f"| all | {len(rows)} | {a:.1f} | {c:.1f} | **{a / c:.2f}x** | |")
    lines.append(f"\nThe faster of the two for each layer: {best:.1f} ms, "
                 f"{a / best:.2f}x the float32 kernels'.")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=224, help="image side of the 15M model")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--append", help="append the results as a Markdown section to this file")
    a = ap.parse_args()
    torch.set_num_threads(1)
    body = table(measure(a.size, a.repeat))
    print(body)
    if a.append:
        caps = torch._C._cpu._get_cpu_capability()
        setting = (f"meta-spikeformer-15m at {a.size}x{a.size}, T = {T}, batch 1, 1 thread, best "
                   f"of {a.repeat}; {platform.machine()} ({caps.get('cpu_name')}, AVX-512 VNNI "
                   f"{caps.get('avx512_vnni')}), load average {load_average():.1f}, "
                   f"torch {torch.__version__}.")
        append(a.append, section(f"Simulator: spike convolutions as integer arithmetic "
                                 f"({a.size}x{a.size})", "bench_integer_convs.py", None,
                                 setting, body))


if __name__ == "__main__":
    main()
