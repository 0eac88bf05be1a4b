"""Shaped tensors (frontends/shaped.py): every rule gives the shape and dtype the op gives on
real tensors, answers without fake tensors, and an op outside the rules still has torch's
semantics (through fake tensors); values are never invented."""

from __future__ import annotations

import logging
import operator
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from snncc.frontends import shaped
from snncc.frontends.shaped import ShapedTensor, on_broadcast_constants, shaped_like

g = torch.Generator().manual_seed(0)


def r(*shape, dtype=torch.float32):
    return torch.randn(shape, generator=g).to(dtype)


X4 = r(8, 6, 10, 12)          # [T*B, C, H, W]
X5 = r(4, 2, 6, 10, 12)       # [T, B, C, H, W]
TOK = r(4, 2, 16, 24)         # [T, B, N, D]
W3 = r(9, 6, 3, 3)
conv = nn.Conv2d(6, 9, 3, padding=1)
pool = nn.MaxPool2d(3, 2, 1)

#: (name, function of the activation(s)); the activations are the first arguments
CASES = [
    ("conv2d stride 2 pad 1", lambda x: F.conv2d(x, W3, None, 2, 1), (X4,)),
    ("conv2d dilation 2 bias", lambda x: F.conv2d(x, W3, r(9), 1, 2, 2), (X4,)),
    ("conv2d groups", lambda x: F.conv2d(x, r(12, 2, 5, 3), None, (2, 1), (2, 1), 1, 3), (X4,)),
    ("conv2d same", lambda x: F.conv2d(x, W3, padding="same"), (X4,)),
    ("conv2d valid", lambda x: F.conv2d(x, W3, padding="valid"), (X4,)),
    ("Conv2d module", lambda x: conv(x), (X4,)),
    ("conv1d", lambda x: F.conv1d(x, r(5, 24, 1)), (r(8, 24, 16),)),
    ("conv3d", lambda x: F.conv3d(x, r(3, 2, 3, 3, 3), padding=1), (r(2, 2, 4, 6, 6),)),
    ("linear 4-d", lambda x: F.linear(x, r(7, 24), r(7)), (TOK,)),
    ("Linear module", lambda x: nn.Linear(24, 5)(x), (TOK,)),
    ("matmul", lambda q, k: q @ k.transpose(-2, -1), (TOK, TOK)),
    ("matmul broadcast", lambda x: torch.matmul(x, r(24, 3)), (TOK,)),
    ("bmm", lambda a, b: torch.bmm(a, b), (r(3, 4, 5), r(3, 5, 2))),
    ("max_pool2d", lambda x: pool(x), (X4,)),
    ("max_pool2d ceil", lambda x: F.max_pool2d(x, 3, 2, ceil_mode=True), (X4,)),
    ("avg_pool2d", lambda x: F.avg_pool2d(x, 2), (X4,)),
    ("adaptive_avg_pool2d", lambda x: F.adaptive_avg_pool2d(x, (1, 1)), (X4,)),
    ("AdaptiveAvgPool1d", lambda x: nn.AdaptiveAvgPool1d(1)(x), (r(8, 24, 16),)),
    ("avg_pool1d", lambda x: F.avg_pool1d(x, 2), (r(8, 24, 16),)),
    ("pad", lambda x: F.pad(x, [1, 1, 2, 2]), (X4,)),
    ("pad negative, value", lambda x: F.pad(x, [-1, -1, 0, 3], value=2.0), (X4,)),
    ("add scalar", lambda x: x + 1, (X4,)),
    ("rsub", lambda x: 1.0 - x, (X4,)),
    ("mul broadcast", lambda x: x * r(6, 1, 1), (X4,)),
    ("ge is bool", lambda x: x >= 0.5, (X4,)),
    ("where", lambda x: torch.where(x > 0, x, torch.zeros(())), (X4,)),
    ("float32 + float64 0-d", lambda x: x + torch.tensor(2.0, dtype=torch.float64), (X4,)),
    ("float32 + float64", lambda x: x + r(1, dtype=torch.float64), (X4,)),
    ("int / int", lambda x: x / 2, (torch.arange(6).reshape(2, 3),)),
    ("clamp, sigmoid, relu", lambda x: F.relu(torch.sigmoid(x.clamp(0, 1))), (X4,)),
    ("masked_fill", lambda x: x.masked_fill(x > 0, 0.0), (X4,)),
    ("spikes as float", lambda x: (x >= 0).to(x), (X4,)),
    ("detach clone contiguous", lambda x: x.detach().clone().contiguous(), (X4,)),
    ("double", lambda x: x.double(), (X4,)),
    ("two activations", lambda a, b: a * b - a, (X4, X4)),
    ("flatten", lambda x: x.flatten(0, 1), (X5,)),
    ("reshape -1", lambda x: x.reshape(4, -1, 10, 12), (X5,)),
    ("view", lambda x: x.view(8, 6, 120), (X5,)),
    ("permute transpose", lambda x: x.permute(0, 1, 3, 2).transpose(1, 2), (TOK,)),
    ("unsqueeze squeeze", lambda x: x.unsqueeze(0).squeeze(0).squeeze(1), (r(4, 1, 3),)),
    ("expand", lambda x: x.expand(4, 2, 16, 24), (r(1, 2, 16, 24),)),
    ("getitem", lambda x: x[:, 1:, None, ..., -1], (X5,)),
    ("getitem int", lambda x: x[0], (X5,)),
    ("getitem real index", lambda x: x[:, torch.tensor([0, 1, 1])], (X4,)),
    ("chunk", lambda x: x.chunk(3, dim=2), (X5,)),
    ("split sizes", lambda x: torch.split(x, [2, 4], dim=2), (X5,)),
    ("unbind", lambda x: x.unbind(0), (X5,)),
    ("narrow select movedim", lambda x: x.narrow(2, 1, 3).select(0, 1).movedim(1, -1), (X5,)),
    ("T and mT", lambda x: (x[0, 0].T, x.mT), (TOK,)),
    ("mean keepdim", lambda x: x.mean((3, 4), keepdim=True), (X5,)),
    ("sum", lambda x: x.sum(0), (X5,)),
    ("amax argmax", lambda x: (x.amax(-1), x.argmax(1)), (TOK,)),
    ("max over a dim", lambda x: x.max(dim=1, keepdim=True), (X4,)),
    ("max of two", lambda a, b: torch.max(a, b), (X4, X4)),
    ("min of all", lambda x: x.min(), (X4,)),
    ("adaptive_max_pool3d", lambda x: F.adaptive_max_pool3d(x, 1), (X5,)),
    ("layer_norm", lambda x: F.layer_norm(x, (24,), r(24), r(24)), (TOK,)),
    ("softmax", lambda x: F.softmax(x, -1), (TOK,)),
    ("cumsum", lambda x: x.cumsum(0), (TOK,)),
    ("cat", lambda a, b: torch.cat([a, b], 1), (X4, X4)),
    ("cat promotes", lambda a: torch.cat([a, r(8, 1, 10, 12, dtype=torch.float64)], 1), (X4,)),
    ("stack", lambda a, b: torch.stack([a, b], -1), (X4, X4)),
    ("repeat", lambda x: x.repeat(4, 1, 1, 1, 1), (r(2, 6, 10, 12),)),
    ("empty_like", lambda x: torch.empty_like(x), (X4,)),
    ("zeros_like dtype", lambda x: torch.zeros_like(x, dtype=torch.int64), (X4,)),
    ("full_like", lambda x: torch.full_like(x, 3.0), (X4,)),
    ("shape queries", lambda x: (x.shape, x.dim(), x.numel(), len(x), x.size(1), x.dtype), (X5,)),
]


def _describe(out):
    if isinstance(out, torch.Tensor):
        return ("tensor", tuple(out.shape), out.dtype, out.device)
    if isinstance(out, (tuple, list)):
        return tuple(_describe(o) for o in out)
    return out


@pytest.mark.parametrize("name, f, xs", CASES, ids=[c[0] for c in CASES])
def test_rules_give_the_shape_and_dtype_of_the_op_on_real_tensors(name, f, xs):
    with torch.no_grad():
        expected = _describe(f(*xs))
        shaped.release_fake_mode()
        out = f(*[shaped_like(x) for x in xs])
    assert _describe(out) == expected
    tensors = out if isinstance(out, (tuple, list)) else (out,)
    assert all(isinstance(t, ShapedTensor) for t in tensors if isinstance(t, torch.Tensor))
    assert shaped._fake_mode is None, "answered by fake tensors, not by a rule"


def test_in_place_ops_return_their_tensor():
    x = shaped_like(X4)
    assert x.add_(1) is x and x.mul_(shaped_like(X4)) is x


def test_comparing_with_none_is_python_s_answer():
    """snnTorch's ``if not mem == None``."""
    x = shaped_like(X4)
    assert (x == None) is False and (x != None) is True  # noqa: E711
    assert shaped._fake_mode is None


def test_ops_on_constants_broadcast_over_time_and_batch_compute_one_slice():
    """Meta-SpikeFormer's padding border times a BN's value per channel: the values of the op
    on the full tensors, held as one slice broadcast."""
    border = torch.rand(1, 1, 6, 6, generator=g).expand(8, 1, 6, 6)
    value = torch.rand(1, 5, 1, 1, generator=g)
    for f in (operator.mul, torch.mul, torch.Tensor.sub):
        out = on_broadcast_constants(f, (border, value), {})
        assert torch.equal(out, f(border.contiguous(), value))
        assert out.stride(0) == 0 and out.untyped_storage().nbytes() == 5 * 36 * 4
    assert on_broadcast_constants(operator.mul, (border.contiguous(), value), {}) is None
    assert on_broadcast_constants(torch.matmul, (border, border), {}) is None
    # along a broadcast axis a softmax or a running sum differs from one slice's
    assert on_broadcast_constants(torch.cumsum, (border, 0), {}) is None
    assert on_broadcast_constants(F.softmax, (border, 0), {}) is None
    padded = on_broadcast_constants(F.pad, (border, [1, 1, 2, 0]), {})
    assert torch.equal(padded, F.pad(border.contiguous(), [1, 1, 2, 0])) and padded.stride(0) == 0


def test_ops_outside_the_rules_run_on_fake_tensors():
    x = shaped_like(X5)
    out = torch.flip(x, [1]).cumprod(2)
    assert isinstance(out, ShapedTensor) and out.shape == X5.shape
    assert shaped._fake_mode is not None
    shaped.release_fake_mode()


def test_an_op_that_fails_on_fake_tensors_raises_without_torch_logging_it(caplog):
    """torch's traceback would be printed before snncc's one-line error (the tracer tries
    several readings of an input, and a wrong one fails)."""
    x = shaped_like(X5)
    with caplog.at_level(logging.DEBUG), pytest.raises(RuntimeError, match="repeat dims"):
        torch.flip(x, [1]).repeat(2)
    assert not [r for r in caplog.records if r.name.startswith("torch")]
    assert not logging.getLogger("torch._subclasses.fake_tensor").disabled
    shaped.release_fake_mode()


@pytest.mark.parametrize("read", [
    lambda x: bool((x > 0).any()),
    lambda x: (x.sum() > 0).item(),
    lambda x: x[x > 0],            # a shape that depends on values
    lambda x: x.tolist(),
])
def test_values_are_never_invented(read):
    with pytest.raises(Exception):
        read(shaped_like(X4))
    shaped.release_fake_mode()


def test_tracing_the_zoo_never_needs_fake_tensors():
    """Every zoo family traces on shaped tensors from the rules alone: neither
    ``torch._dynamo`` (which fake tensors import, about 1 s and 70 MB) nor sympy (which
    ``torch.broadcast_shapes`` imports, 0.3 s) is ever imported."""
    code = (
        "import sys\n"
        "from snncc.frontends import tracer, zoo\n"
        "for family in zoo.FAMILIES:\n"
        "    case = zoo.small(family, 1)\n"
        "    tracer.trace(case.model, case.inputs, T=case.model.T,\n"
        "                 static=case.inputs.dim() == 4)\n"
        "print('torch._dynamo' in sys.modules or 'sympy' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False"
