"""A generator of broken inputs for the CLI: each case writes its files into a directory and
says how ``snncc`` must refuse them.

Every ``CASES[name](tmp)`` returns a :class:`Case`: ``argv`` (without the program name),
the exit ``code`` and a ``message`` substring (case-insensitive) of the one-line
``snncc: error: ...`` on stderr. ``isolate`` marks cases that must run in a subprocess (their
peak memory or a hang is what they test); ``slow`` ones are left out of the default run.
``untouched`` lists paths (files or directories) whose contents the run must leave exactly as
they were. ``fsize`` limits the size of files the subprocess may write (RLIMIT_FSIZE),
standing in for a full disk.

Base files (a tiny graph as .snnir and .nir, the built-in checkpoint, inputs) are written once
per directory and reused.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CKPT = ROOT / "examples" / "checkpoints" / "digits-spikformer.pt"
ARCH = "digits-spikformer"


@dataclass
class Case:
    argv: list[str]
    code: int
    message: str
    isolate: bool = False
    slow: bool = False
    untouched: list = None
    fsize: int | None = None


CASES: dict = {}


def case(fn=None, *, isolate=False, slow=False):
    """Register ``fn(tmp) -> Case``; the decorator's flags fill the Case's defaults."""
    def register(f):
        def make(tmp: Path) -> Case:
            c = f(Path(tmp))
            c.isolate, c.slow = c.isolate or isolate, c.slow or slow
            return c
        make.__name__ = f.__name__
        make.flags = {"isolate": isolate, "slow": slow}
        CASES[f.__name__] = make
        return make
    return register(fn) if fn is not None else register


# ----------------------------------------------------------------------------- base files
def tiny_graph(delay: int | None = None, input_shape=(4,), static: bool = True):
    """x (static [B, 4]) -> fc (3x4) -> [delay] -> lif -> out."""
    from snncc import ir
    from snncc.graph import Graph

    g = Graph("tiny", {"T": 4})
    g.add(ir.Input("x", input_shape=input_shape, static=static))
    g.add(ir.Linear("fc", ("x",), weight=np.arange(12.0).reshape(3, 4) / 10,
                    bias=np.zeros(3)))
    src = "fc"
    if delay:
        g.add(ir.Delay("d", ("fc",), steps=delay))
        src = "d"
    g.add(ir.Neuron("lif", (src,), alpha=0.5, gamma=1.0, beta=0.0, theta=1.0))
    g.add(ir.Output("out", ("lif",)))
    return g.verify()


def snnir_parts(g=None) -> tuple[dict, dict]:
    """(header, arrays) of a graph as serialize writes them."""
    from snncc import serialize

    arrays = serialize.to_bytes_dict(g if g is not None else tiny_graph())
    header = json.loads(bytes(arrays.pop(serialize.HEADER)).decode())
    return header, arrays


def write_snnir(path: Path, header, arrays: dict, raw_header: bytes | None = None) -> Path:
    """A .snnir archive with ``header`` (any JSON value) and ``arrays`` as members."""
    from snncc import serialize

    body = raw_header if raw_header is not None else json.dumps(header).encode()
    with open(path, "wb") as f:  # (a path would get '.npz' appended)
        np.savez(f, **{serialize.HEADER: np.frombuffer(body, dtype=np.uint8)}, **arrays)
    return path


def base_snnir(tmp: Path) -> Path:
    p = tmp / "tiny.snnir"
    if not p.exists():
        from snncc import serialize

        serialize.save(tiny_graph(), p)
    return p


def npy(tmp: Path, name: str, a) -> str:
    p = tmp / name
    np.save(p, a)
    return str(p)


def inputs(tmp: Path, batch: int = 2) -> str:
    return npy(tmp, f"x{batch}.npy", np.random.default_rng(0).normal(0, 1, (batch, 4)))


def nir_graph(dt=1e-4, tau=1e-2, weight=None, extra_meta=None, edges=None, nodes=None):
    import nir

    w = np.arange(12.0).reshape(3, 4) / 10 if weight is None else weight
    ns = {"input": nir.Input(np.array([4])), "fc": nir.Affine(w, np.zeros(3)),
          "lif": nir.LIF(tau=np.full(3, tau), r=np.full(3, 1.0), v_leak=np.zeros(3),
                         v_threshold=np.ones(3), v_reset=np.zeros(3)),
          "output": nir.Output(np.array([3]))}
    ns.update(nodes or {})
    meta = {} if dt is None else {"dt": dt}
    meta.update(extra_meta or {})
    return nir.NIRGraph(nodes=ns, edges=edges or [("input", "fc"), ("fc", "lif"),
                                                  ("lif", "output")],
                        metadata=meta, type_check=False)


def write_nir(path: Path, graph) -> str:
    import nir

    nir.write(path, graph)
    return str(path)


def state_dict():
    import torch

    return torch.load(CKPT, map_location="cpu", weights_only=True)


def save_pt(path: Path, obj) -> str:
    import torch

    torch.save(obj, path)
    return str(path)


def _rezip(src: Path, dst: Path, replace: dict) -> None:
    """Copy a zip, replacing the members named in ``replace`` by writer functions
    ``fn(fileobj)``, written deflated (zip64)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            if info.filename in replace:
                zi = zipfile.ZipInfo(info.filename)
                zi.compress_type = zipfile.ZIP_DEFLATED
                with zout.open(zi, "w", force_zip64=True) as f:
                    replace[info.filename](f)
            else:
                zout.writestr(info, zin.read(info.filename))


def _zeros(nbytes: int, chunk: int = 1 << 22):
    def write(f):
        z = bytes(chunk)
        for _ in range(nbytes // chunk):
            f.write(z)
    return write


def _forge_size(path: Path, member: str, declared: int) -> None:
    """Rewrite a stored member's declared uncompressed size in both zip headers (the data
    stays small): a zip whose headers lie."""
    data = bytearray(path.read_bytes())
    name = member.encode()
    for sig, off in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        i = 0
        while (i := data.find(sig, i)) >= 0:
            nlen_off = 26 if sig == b"PK\x03\x04" else 28
            n = int.from_bytes(data[i + nlen_off:i + nlen_off + 2], "little")
            start = i + (30 if sig == b"PK\x03\x04" else 46)
            if bytes(data[start:start + n]) == name:
                data[i + off:i + off + 4] = min(declared, 0xFFFFFFFE).to_bytes(4, "little")
            i += 4
    path.write_bytes(bytes(data))


# ============================================================================ .snnir
def _snnir_case(tmp, name, mutate, argv_tail=(), message="", code=1, cmd="inspect"):
    header, arrays = snnir_parts()
    raw = mutate(header, arrays)
    p = write_snnir(tmp / f"{name}.snnir", header if not isinstance(raw, tuple) else raw[0],
                    arrays, raw_header=raw if isinstance(raw, bytes) else None)
    return Case([cmd, str(p), *argv_tail], code, message)


@case
def snnir_header_list(tmp):
    return _snnir_case(tmp, "hl", lambda h, a: json.dumps([1, 2]).encode(),
                       message="expected a JSON object, got list")


@case
def snnir_header_string(tmp):
    return _snnir_case(tmp, "hs", lambda h, a: json.dumps("snnir").encode(),
                       message="expected a JSON object, got str")


@case
def snnir_header_number(tmp):
    return _snnir_case(tmp, "hn", lambda h, a: b"42", message="got int")


@case
def snnir_header_not_json(tmp):
    return _snnir_case(tmp, "hj", lambda h, a: b"{not json", message="corrupt")


@case
def snnir_header_not_utf8(tmp):
    return _snnir_case(tmp, "hu", lambda h, a: b"\xff\xfe{}", message="corrupt")


@case
def snnir_no_header(tmp):
    p = tmp / "noheader.snnir"
    with open(p, "wb") as f:
        np.savez(f, a0=np.zeros(3))
    return Case(["inspect", str(p)], 1, "no header")


def _set(path, value):
    def mutate(h, a):
        d = h
        for k in path[:-1]:
            d = d[k]
        d[path[-1]] = value
    return mutate


@case
def snnir_T_string(tmp):
    return _snnir_case(tmp, "ts", _set(["meta", "T"], "abc"), message="meta 'T'")


@case
def snnir_T_zero(tmp):
    return _snnir_case(tmp, "t0", _set(["meta", "T"], 0), message="must be >= 1")


@case
def snnir_T_negative(tmp):
    return _snnir_case(tmp, "tn", _set(["meta", "T"], -3), message="must be >= 1")


@case
def snnir_T_fraction(tmp):
    return _snnir_case(tmp, "tf", _set(["meta", "T"], 2.5), message="whole number")


@case
def snnir_T_list(tmp):
    return _snnir_case(tmp, "tl", _set(["meta", "T"], [4]), message="meta 'T'")


@case
def snnir_dt_negative(tmp):
    return _snnir_case(tmp, "dtn", _set(["meta", "dt"], -1e-4), message="'dt'")


@case
def snnir_meta_list(tmp):
    return _snnir_case(tmp, "ml", _set(["meta"], [1]), message="'meta' is not an object")


@case
def snnir_name_number(tmp):
    return _snnir_case(tmp, "nn", _set(["name"], 7), message="'name'")


@case
def snnir_wrong_format(tmp):
    return _snnir_case(tmp, "wf", _set(["format"], "onnx"), message="not a .snnir file")


@case
def snnir_wrong_version(tmp):
    return _snnir_case(tmp, "wv", _set(["version"], 99), message="version 99")


@case
def snnir_nodes_dict(tmp):
    return _snnir_case(tmp, "nd", _set(["nodes"], {"a": 1}), message="'nodes' is not a list")


@case
def snnir_node_string(tmp):
    return _snnir_case(tmp, "ns", lambda h, a: h["nodes"].append("x"),
                       message="node #4 is not an object")


@case
def snnir_node_missing_op(tmp):
    return _snnir_case(tmp, "nmo", lambda h, a: h["nodes"][1].pop("op"), message="'op'")


@case
def snnir_node_inputs_string(tmp):
    return _snnir_case(tmp, "nis", _set(["nodes", 1, "inputs"], "x"), message="'inputs'")


@case
def snnir_node_input_missing(tmp):
    return _snnir_case(tmp, "nim", _set(["nodes", 1, "inputs"], ["ghost"]),
                       message="ghost")


@case
def snnir_unknown_op(tmp):
    return _snnir_case(tmp, "uo", _set(["nodes", 1, "op"], "Softmax"),
                       message="unknown node type 'Softmax'")


@case
def snnir_missing_array(tmp):
    return _snnir_case(tmp, "ma", lambda h, a: a.pop("a0"), message="'a0'")


@case
def snnir_bad_attr(tmp):
    return _snnir_case(tmp, "ba", _set(["nodes", 2, "attrs", "cmp"], "<="), message="lif")


@case
def snnir_attr_wrong_type(tmp):
    return _snnir_case(tmp, "awt", _set(["nodes", 0, "attrs", "input_shape"], "four"),
                       message="malformed node 'x'")


@case
def snnir_unknown_attr(tmp):
    return _snnir_case(tmp, "ua", _set(["nodes", 1, "attrs", "frobnicate"], 1),
                       message="malformed node 'fc'")


@case
def snnir_duplicate_node(tmp):
    return _snnir_case(tmp, "dn", lambda h, a: h["nodes"].append(dict(h["nodes"][3])),
                       message="duplicate")


@case
def snnir_shape_mismatch(tmp):
    return _snnir_case(tmp, "sm", lambda h, a: a.__setitem__("a0", np.zeros((3, 5))),
                       message="fc")


@case
def snnir_complex_weight(tmp):
    return _snnir_case(tmp, "cw", lambda h, a: a.__setitem__("a0", a["a0"] + 1j),
                       message="complex")


@case
def snnir_huge_int_weight(tmp):
    return _snnir_case(tmp, "hiw", lambda h, a: a.__setitem__(
        "a0", np.full((3, 4), 2 ** 60, dtype=np.int64)), message="2**53")


@case
def snnir_string_weight(tmp):
    return _snnir_case(tmp, "sw", lambda h, a: a.__setitem__("a0", np.full((3, 4), "w")),
                       message="not real numbers")


@case
def snnir_nan_weight(tmp):
    return _snnir_case(tmp, "nw", lambda h, a: a.__setitem__("a0", np.full((3, 4), np.nan)),
                       message="fc")


@case
def snnir_extra_member(tmp):
    return _snnir_case(tmp, "em", lambda h, a: a.__setitem__("junk", np.zeros(1 << 20)),
                       message="'junk'")


@case
def snnir_non_npy_member(tmp):
    p = write_snnir(tmp / "nnm.snnir", *snnir_parts())
    with zipfile.ZipFile(p, "a") as z:
        z.writestr("readme.txt", "hello")
    return Case(["inspect", str(p)], 1, "readme.txt")


@case
def snnir_truncated(tmp):
    data = base_snnir(tmp).read_bytes()
    p = tmp / "trunc.snnir"
    p.write_bytes(data[:len(data) // 2])
    return Case(["inspect", str(p)], 1, "corrupt or truncated")


@case
def snnir_garbage(tmp):
    p = tmp / "garbage.snnir"
    p.write_bytes(b"this is not a zip file at all" * 10)
    return Case(["inspect", str(p)], 1, "corrupt")


@case
def snnir_empty_file(tmp):
    p = tmp / "empty.snnir"
    p.write_bytes(b"")
    return Case(["inspect", str(p)], 1, "empty.snnir")


@case
def snnir_directory(tmp):
    p = tmp / "dir.snnir"
    p.mkdir(exist_ok=True)
    return Case(["inspect", str(p)], 1, "directory")


@case
def snnir_missing_file(tmp):
    return Case(["inspect", str(tmp / "nope.snnir")], 1, "no such file")


@case
def snnir_npy_header_lies(tmp):
    """A member whose .npy header declares a 1e12-element array but holds 96 bytes."""
    header, arrays = snnir_parts()
    p = write_snnir(tmp / "lies.snnir", header, arrays)
    with zipfile.ZipFile(p) as z:
        members = {n: z.read(n) for n in z.namelist()}
    head = np.lib.format.header_data_from_array_1_0(np.zeros((3, 4)))
    head["shape"] = (1000000, 1000000)
    import io
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, head)
    members["a0.npy"] = buf.getvalue() + np.zeros(12).tobytes()
    with zipfile.ZipFile(p, "w") as z:
        for n, d in members.items():
            z.writestr(n, d)
    return Case(["inspect", str(p)], 1, "declares shape (1000000, 1000000)")


@case
def snnir_pickled_member(tmp):
    header, arrays = snnir_parts()
    arrays["a0"] = np.array([{"x": 1}], dtype=object)
    p = tmp / "pickled.snnir"
    from snncc import serialize
    with open(p, "wb") as f:
        np.savez(f, **{serialize.HEADER: np.frombuffer(json.dumps(header).encode(), np.uint8)},
                 **arrays)
    return Case(["inspect", str(p)], 1, "python objects")


@case
def snnir_cycle_without_delay(tmp):
    return _snnir_case(tmp, "cyc", _set(["nodes", 1, "inputs"], ["lif"]), message="cycle")


@case(isolate=True)
def snnir_zip_bomb_forged(tmp):
    """A stored member whose zip headers declare 4 GB."""
    header, arrays = snnir_parts()
    p = write_snnir(tmp / "forged.snnir", header, arrays)
    _forge_size(p, "a0.npy", 4 * 2 ** 30)
    return Case(["inspect", str(p)], 1, "a0.npy")


@case(isolate=True, slow=True)
def snnir_extra_1gb_member(tmp):
    """The issue's case: an extra 1 GB member (deflated to ~1 MB)."""
    p = write_snnir(tmp / "extra1g.snnir", *snnir_parts())
    with zipfile.ZipFile(p, "a") as z:
        zi = zipfile.ZipInfo("junk.npy")
        zi.compress_type = zipfile.ZIP_DEFLATED
        with z.open(zi, "w", force_zip64=True) as f:
            _zeros(1 << 30)(f)
    return Case(["inspect", str(p)], 1, "junk")


@case
def snnir_T_1e9(tmp):
    return _snnir_case(tmp, "t1e9", _set(["meta", "T"], 10 ** 9), message="memory budget",
                       cmd="inspect")


@case(isolate=True)
def snnir_T_1e9_run(tmp):
    c = _snnir_case(tmp, "t1e9r", _set(["meta", "T"], 10 ** 9), message="memory budget",
                    cmd="run")
    c.argv += ["--inputs", inputs(tmp), "-o", str(tmp / "o_t1e9.npy")]
    return c


@case(isolate=True)
def snnir_delay_1e8(tmp):
    header, arrays = snnir_parts(tiny_graph(delay=10 ** 8))
    p = write_snnir(tmp / "delay.snnir", header, arrays)
    return Case(["check", str(p)], 1, "memory budget")


@case(isolate=True)
def snnir_input_1e5x1e5(tmp):
    header, arrays = snnir_parts()
    header["nodes"][0]["attrs"]["input_shape"] = [100000, 100000]
    header["nodes"].insert(1, {"op": "Flatten", "name": "flat", "inputs": ["x"], "path": "",
                               "attrs": {"start": 0, "end": -1}, "arrays": {}})
    header["nodes"][2]["inputs"] = ["flat"]
    p = write_snnir(tmp / "bigin.snnir", header, arrays)
    return Case(["inspect", str(p)], 1, "memory budget")


@case
def snnir_input_negative_shape(tmp):
    return _snnir_case(tmp, "ins", _set(["nodes", 0, "attrs", "input_shape"], [-4]),
                       message="input shape must be positive")


# ============================================================================ .nir
def _nir_case(tmp, name, graph, message, cmd="inspect", code=1, tail=()):
    p = write_nir(tmp / f"{name}.nir", graph)
    return Case([cmd, p, *tail], code, message)


@case
def nir_dt_zero(tmp):
    return _nir_case(tmp, "dt0", nir_graph(dt=0.0), "dt = 0.0 must be positive")


@case
def nir_dt_negative(tmp):
    return _nir_case(tmp, "dtn", nir_graph(dt=-1e-4), "must be positive")


@case
def nir_dt_nan(tmp):
    return _nir_case(tmp, "dtnan", nir_graph(dt=float("nan")), "must be positive")


@case
def nir_dt_string(tmp):
    return _nir_case(tmp, "dts", nir_graph(dt="fast"), "is not a number")


@case
def nir_tau_zero(tmp):
    return _nir_case(tmp, "tau0", nir_graph(tau=0.0), "tau = 0 must be positive")


@case
def nir_tau_negative(tmp):
    return _nir_case(tmp, "taun", nir_graph(tau=-0.01), "must be positive")


@case
def nir_alpha_negative(tmp):
    """norse-like units: tau 2e-6 s with dt 1e-4 s gives alpha = -49."""
    return _nir_case(tmp, "alpha", nir_graph(tau=2e-6), "different units")


@case
def nir_li_tau_zero(tmp):
    import nir
    g = nir_graph(nodes={"lif": nir.LI(tau=np.zeros(3), r=np.ones(3), v_leak=np.zeros(3))})
    return _nir_case(tmp, "litau", g, "tau = 0 must be positive")


@case
def nir_cuba_tau_syn_negative(tmp):
    import nir
    g = nir_graph(nodes={"lif": nir.CubaLIF(tau_syn=np.full(3, -1.0), tau_mem=np.ones(3),
                                            r=np.ones(3), v_leak=np.zeros(3),
                                            v_threshold=np.ones(3), v_reset=np.zeros(3))})
    return _nir_case(tmp, "cuba", g, "tau_syn")


@case
def nir_edge_to_missing(tmp):
    g = nir_graph(edges=[("input", "fc"), ("fc", "lif"), ("lif", "ghost")])
    return _nir_case(tmp, "em", g, "ghost")


@case
def nir_edge_from_missing(tmp):
    g = nir_graph(edges=[("input", "fc"), ("phantom", "lif"), ("fc", "lif"), ("lif", "output")])
    return _nir_case(tmp, "efm", g, "phantom")


def _extension(attrs="{}", inputs='["fc"]', op="MaxPool2d"):
    import nir
    return nir.NIRGraph(nodes={"input": nir.Input(np.array([3])),
                               "output": nir.Output(np.array([3]))},
                        edges=[("input", "output")],
                        metadata={"snncc.op": op, "snncc.attrs": attrs, "snncc.inputs": inputs},
                        type_check=False)


def _with_ext(**kw):
    return nir_graph(nodes={"ext": _extension(**kw)},
                     edges=[("input", "fc"), ("fc", "ext"), ("ext", "lif"), ("lif", "output")])


@case
def nir_extension_bad_json(tmp):
    return _nir_case(tmp, "ebj", _with_ext(attrs="{oops"), "ext")


@case
def nir_extension_attrs_list(tmp):
    return _nir_case(tmp, "eal", _with_ext(attrs="[1, 2]"), "not a JSON object")


@case
def nir_extension_inputs_bad(tmp):
    return _nir_case(tmp, "eib", _with_ext(inputs="fc"), "ext")


@case
def nir_extension_unknown_op(tmp):
    return _nir_case(tmp, "euo", _with_ext(op="Softmax"), "Softmax")


@case
def nir_extension_missing_attr(tmp):
    return _nir_case(tmp, "ema", _with_ext(attrs='{"kernel_size": [2, 2]}'), "ext")


@case
def nir_extension_gather_fractional_index(tmp):  # (int() made 0.5 position 0, silently)
    return _nir_case(tmp, "egf", _with_ext(op="Gather", attrs='{"axis": 0, "index": [0, 0.5, 1]}'),
                     "must be integers")


@case
def nir_extension_gather_index_out_of_range(tmp):
    return _nir_case(tmp, "ego", _with_ext(op="Gather", attrs='{"axis": 0, "index": [0, 1, 3]}'),
                     "does not fit")


@case
def nir_extension_source_missing(tmp):
    return _nir_case(tmp, "esm", _with_ext(inputs='["nowhere"]', op="Flatten",
                                           attrs='{"start": 0, "end": -1}'), "nowhere")


@case
def nir_unknown_node_type(tmp):
    p = write_nir(tmp / "unk.nir", nir_graph())
    import h5py
    with h5py.File(p, "a") as f:
        del f["node/nodes/fc/type"]
        f["node/nodes/fc/type"] = np.bytes_("Softmax")
    return Case(["inspect", p], 1, "unk.nir")


@case
def nir_not_hdf5(tmp):
    p = tmp / "garbage.nir"
    p.write_bytes(b"\x89HDF garbage" * 20)
    return Case(["inspect", str(p)], 1, "not a readable NIR")


@case
def nir_truncated(tmp):
    data = Path(write_nir(tmp / "full.nir", nir_graph())).read_bytes()
    p = tmp / "trunc.nir"
    p.write_bytes(data[:len(data) // 2])
    return Case(["inspect", str(p)], 1, "trunc.nir")


@case
def nir_missing_file(tmp):
    return Case(["inspect", str(tmp / "nope.nir")], 1, "no such file")


@case
def nir_empty_hdf5(tmp):
    import h5py
    p = tmp / "emptyh5.nir"
    h5py.File(p, "w").close()
    return Case(["inspect", str(p)], 1, "emptyh5.nir")


@case
def nir_complex_weight(tmp):
    return _nir_case(tmp, "cw", nir_graph(weight=np.ones((3, 4)) + 1j), "complex")


@case
def nir_nan_weight(tmp):
    return _nir_case(tmp, "nw", nir_graph(weight=np.full((3, 4), np.nan)), "NaN")


@case
def nir_huge_int_weight(tmp):
    return _nir_case(tmp, "hiw", nir_graph(weight=np.full((3, 4), 2 ** 62, dtype=np.int64)),
                     "2**53")


@case
def nir_T_string(tmp):
    return _nir_case(tmp, "ts", nir_graph(extra_meta={"snncc.T": "many"}), "snncc.T")


@case
def nir_T_zero(tmp):
    return _nir_case(tmp, "t0", nir_graph(extra_meta={"snncc.T": 0}), "snncc.T")


@case
def nir_meta_bad_json(tmp):
    return _nir_case(tmp, "mbj", nir_graph(extra_meta={"snncc.meta": "{nope"}), "snncc.meta")


@case
def nir_meta_not_object(tmp):
    return _nir_case(tmp, "mno", nir_graph(extra_meta={"snncc.meta": "[1]"}), "snncc.meta")


@case
def nir_input_negative(tmp):
    import nir
    return _nir_case(tmp, "ineg", nir_graph(nodes={"input": nir.Input(np.array([-4]))}),
                     "input")


@case
def nir_weight_shape_mismatch(tmp):
    return _nir_case(tmp, "wsm", nir_graph(weight=np.ones((3, 5))), "fc")


@case
def nir_delay_fraction(tmp):
    import nir
    g = nir_graph(nodes={"d": nir.Delay(np.full(3, 1.5e-4))},
                  edges=[("input", "fc"), ("fc", "d"), ("d", "lif"), ("lif", "output")])
    return _nir_case(tmp, "df", g, "whole number")


@case(isolate=True)
def nir_delay_1e8(tmp):
    import nir
    g = nir_graph(nodes={"d": nir.Delay(np.full(3, 1e8 * 1e-4))},
                  edges=[("input", "fc"), ("fc", "d"), ("d", "lif"), ("lif", "output")])
    return _nir_case(tmp, "d1e8", g, "memory budget", cmd="check")


@case(isolate=True)
def nir_fill_value_3gb(tmp):
    """The issue's case: a 37 KB file whose weight dataset declares 3.2 GB (never written,
    read back as the HDF5 fill value)."""
    import h5py
    p = write_nir(tmp / "fill.nir", nir_graph())
    with h5py.File(p, "a") as f:
        del f["node/nodes/fc/weight"]
        f.create_dataset("node/nodes/fc/weight", shape=(20000, 40000), dtype="f4",
                         fillvalue=0.5)
    return Case(["inspect", p], 1, "fill value")


@case(isolate=True)
def nir_input_1e5x1e5(tmp):
    import nir
    # an Input of 1e5 x 1e5 feeding a Threshold: the arrays stay tiny, the declared shapes do not
    g = nir.NIRGraph(nodes={"input": nir.Input(np.array([100000, 100000])),
                            "th": nir.Threshold(np.ones(1)),
                            "output": nir.Output(np.array([100000, 100000]))},
                     edges=[("input", "th"), ("th", "output")], metadata={"dt": 1e-4},
                     type_check=False)
    return _nir_case(tmp, "bigin", g, "memory budget")


# ============================================================================ checkpoints
def _pt_case(tmp, name, obj, message, extra=(), code=1):
    return Case(["compile", save_pt(tmp / f"{name}.pt", obj), "--arch", ARCH, "-o",
                 str(tmp / f"{name}.out.snnir"), *extra], code, message)


@case
def pt_no_arch(tmp):
    return Case(["compile", str(CKPT), "-o", str(tmp / "na.snnir")], 1, "--arch")


@case
def pt_unknown_arch(tmp):
    return Case(["compile", str(CKPT), "--arch", "resnet9000", "-o", str(tmp / "ua.snnir")], 1,
                "resnet9000")


@case
def pt_missing_file(tmp):
    return Case(["compile", str(tmp / "nope.pt"), "--arch", ARCH, "-o",
                 str(tmp / "mf.snnir")], 1, "no such file")


@case
def pt_garbage(tmp):
    p = tmp / "garbage.pt"
    p.write_bytes(b"not a checkpoint" * 100)
    return Case(["compile", str(p), "--arch", ARCH, "-o", str(tmp / "g.snnir")], 1,
                "cannot read it as a PyTorch checkpoint")


def _netx_file(path: Path) -> Path:
    """A file in lava-dl netx's layout (``layer/<i>/...`` groups), as ``--target lava
    --fixed-point`` writes ``netx.h5``."""
    import h5py

    with h5py.File(path, "w") as f:
        layer = f.create_group("layer").create_group("0")
        layer.create_dataset("weight", data=np.ones((3, 3)))
        layer.create_dataset("type", data=np.bytes_("dense"))
    return path


def _npz_file(path: Path) -> Path:
    with open(path, "wb") as f:
        np.savez(f, weight=np.ones((3, 3)))
    return path


def _onnx_file(path: Path) -> Path:
    import torch

    torch.onnx.export(torch.nn.Linear(3, 3), (torch.ones(1, 3),), str(path), dynamo=False)
    return path


# other tools' files given as a checkpoint or a NIR graph: named, with what to do (each was
# "corrupt or truncated?" or a KeyError of h5py)
@case
def pt_is_netx(tmp):
    return Case(["compile", str(_netx_file(tmp / "net.pt")), "--arch", ARCH, "-o",
                 str(tmp / "nx.snnir")], 1, "a lava-dl netx network (HDF5")


@case
def pt_is_npz(tmp):
    return Case(["compile", str(_npz_file(tmp / "weights.pt")), "--arch", ARCH, "-o",
                 str(tmp / "nz.snnir")], 1, "a numpy .npz archive, not a PyTorch checkpoint")


@case
def pt_is_onnx(tmp):
    return Case(["compile", str(_onnx_file(tmp / "model.onnx")), "--arch", ARCH, "-o",
                 str(tmp / "ox.snnir")], 1, "an ONNX model (a target of snncc, not a source)")


@case
def pt_is_nir(tmp):
    p = tmp / "graph.pt"
    p.write_bytes(Path(write_nir(tmp / "graph-src.nir", nir_graph())).read_bytes())
    return Case(["compile", str(p), "--arch", ARCH, "-o", str(tmp / "gn.snnir")], 1,
                "a NIR graph, not a PyTorch checkpoint: give it as a .nir file")


@case
def nir_is_netx(tmp):
    return Case(["compile", str(_netx_file(tmp / "net.nir")), "-o", str(tmp / "nn.snnir")], 1,
                "not a NIR graph: compile the model it was made from")


@case
def nir_is_checkpoint(tmp):
    p = tmp / "ckpt.nir"
    p.write_bytes(CKPT.read_bytes())
    return Case(["compile", str(p), "-o", str(tmp / "cn.snnir")], 1,
                "a PyTorch checkpoint, not a NIR graph: give it with --arch or --model")


@case
def pt_truncated(tmp):
    p = tmp / "trunc.pt"
    p.write_bytes(CKPT.read_bytes()[:5000])
    return Case(["compile", str(p), "--arch", ARCH, "-o", str(tmp / "t.snnir")], 1,
                "trunc.pt")


@case
def pt_missing_key(tmp):
    sd = state_dict()
    sd.pop(next(iter(sd)))
    return _pt_case(tmp, "mk", sd, "missing")


@case
def pt_unexpected_key(tmp):
    import torch
    sd = state_dict()
    sd["extra.weight"] = torch.zeros(3)
    return _pt_case(tmp, "uk", sd, "unexpected keys")


@case
def pt_misshaped_key(tmp):
    import torch
    sd = state_dict()
    k = next(iter(sd))
    sd[k] = torch.zeros(7)
    return _pt_case(tmp, "msk", sd, "has shape (7,)")


@case
def pt_list(tmp):
    return _pt_case(tmp, "list", [1, 2, 3], "holds a list")


@case
def pt_string_value(tmp):
    sd = state_dict()
    sd[next(iter(sd))] = "weights"
    return _pt_case(tmp, "sv", sd, "holds a str")


@case
def pt_nan(tmp):
    sd = state_dict()
    k = next(k for k, v in sd.items() if v.is_floating_point())
    sd[k] = sd[k] * float("nan")
    return _pt_case(tmp, "nan", sd, "NaN")


@case
def pt_complex(tmp):
    import torch
    sd = state_dict()
    k = next(k for k, v in sd.items() if v.is_floating_point())
    sd[k] = sd[k].to(torch.complex64)
    return _pt_case(tmp, "cplx", sd, "complex")


@case
def pt_huge_int(tmp):
    import torch
    sd = state_dict()
    k = next(k for k, v in sd.items() if v.is_floating_point())
    sd[k] = torch.full(sd[k].shape, 2 ** 40 + 1, dtype=torch.int64)
    return _pt_case(tmp, "hint", sd, "cannot represent exactly")


@case
def pt_pickled_object(tmp):
    import torch
    sd = state_dict()
    sd["extra"] = torch.nn.Linear(2, 2)
    return _pt_case(tmp, "obj", sd, "--trust-checkpoint")


@case
def pt_torchscript_archive_trusted(tmp):
    """A TorchScript archive loaded with trust is a ScriptModule, whose forward is TorchScript:
    it ended in an internal error inside the tracer."""
    import torch

    path = tmp / "scripted.pt"
    if not path.exists():
        torch.jit.script(torch.nn.Sequential(torch.nn.Linear(4, 3))).save(str(path))
    return Case(["check", str(path), "--input-shape", "4", "--T", "4", "--layout", "TB",
                 "--trust-checkpoint"], 1, "TorchScript module")


@case
def pt_T_zero(tmp):
    return Case(["compile", str(CKPT), "--arch", ARCH, "--T", "0", "-o", str(tmp / "t0.snnir")],
                2, "--T")


@case
def pt_T_negative(tmp):
    return Case(["compile", str(CKPT), "--arch", ARCH, "--T", "-1", "-o",
                 str(tmp / "tn.snnir")], 2, "--T")


@case
def pt_T_not_int(tmp):
    return Case(["compile", str(CKPT), "--arch", ARCH, "--T", "lots", "-o",
                 str(tmp / "tni.snnir")], 2, "--T")


@case(isolate=True)
def pt_T_100000_budget(tmp):
    """--T 100000 inspected (traced and simulated with traces) under a 1 GB budget."""
    return Case(["--max-memory", "1G", "inspect", str(CKPT), "--arch", ARCH, "--T", "100000"],
                1, "memory budget")


@case(isolate=True)
def pt_T_1e9_check(tmp):
    return Case(["check", str(CKPT), "--arch", ARCH, "--T", "1000000000"], 1, "memory budget")


@case(isolate=True)
def pt_forged_storage(tmp):
    """data.pkl declares a 1.6 GB storage while the archive holds 144 bytes for it."""
    src = Path(save_pt(tmp / "fs_src.pt", state_dict()))
    with zipfile.ZipFile(src) as z:
        pkl_name = next(n for n in z.namelist() if n.endswith("data.pkl"))
        ops = z.read(pkl_name)
    # BININT1 36 of storage '0' -> BININT 400_000_000 (the first storage: 4x1x3x3 = 36 floats)
    needle = b"X\x01\x00\x00\x000q\x06X\x03\x00\x00\x00cpuq\x07K$"
    assert needle in ops, "unexpected pickle layout"
    ops = ops.replace(needle, needle[:-2] + b"J" + (400_000_000).to_bytes(4, "little"), 1)
    p = tmp / "forged_storage.pt"
    _rezip(src, p, {pkl_name: lambda f: f.write(ops)})
    return Case(["compile", str(p), "--arch", ARCH, "-o", str(tmp / "fs.snnir")], 1,
                "storage '0' declares")


@case(isolate=True)
def pt_zip_bomb_member(tmp):
    """A 144-byte storage whose member decompresses to 256 MB (deflated to ~256 KB)."""
    src = Path(save_pt(tmp / "zb_src.pt", state_dict()))
    with zipfile.ZipFile(src) as z:
        name = next(n for n in z.namelist() if n.endswith("/data/0"))
    p = tmp / "zipbomb.pt"
    _rezip(src, p, {name: _zeros(256 << 20)})
    return Case(["compile", str(p), "--arch", ARCH, "-o", str(tmp / "zb.snnir")], 1, "zip bomb")


@case(isolate=True, slow=True)
def pt_zip_bomb_3gb(tmp):
    """The issue's case: a ~3 MB .pt whose storage member decompresses to 3 GB."""
    src = Path(save_pt(tmp / "zb3_src.pt", state_dict()))
    with zipfile.ZipFile(src) as z:
        name = next(n for n in z.namelist() if n.endswith("/data/0"))
    p = tmp / "zipbomb3g.pt"
    _rezip(src, p, {name: _zeros(3 << 30)})
    return Case(["compile", str(p), "--arch", ARCH, "-o", str(tmp / "zb3.snnir")], 1,
                "zip bomb")


@case(isolate=True)
def pt_forged_member_size(tmp):
    p = tmp / "forged_member.pt"
    p.write_bytes(CKPT.read_bytes())
    with zipfile.ZipFile(p) as z:
        name = next(n for n in z.namelist() if n.endswith("/data/0"))
    _forge_size(p, name, 3 * 2 ** 30)
    return Case(["compile", str(p), "--arch", ARCH, "-o", str(tmp / "fm.snnir")], 1, "data/0")


@case(isolate=True)
def pt_unexpected_big_key(tmp):
    """An unexpected 400 MB tensor (deflated): refused by the key check before loading."""
    import torch
    sd = state_dict()
    sd["junk"] = torch.zeros(1)
    src = Path(save_pt(tmp / "ubk_src.pt", sd))
    # give 'junk' (the last storage) a member of 400 MB and a matching declared numel
    with zipfile.ZipFile(src) as z:
        pkl_name = next(n for n in z.namelist() if n.endswith("data.pkl"))
        ops = z.read(pkl_name)
        last = max(int(n.rsplit("/", 1)[1]) for n in z.namelist() if "/data/" in n)
    needle = b"X" + len(str(last)).to_bytes(4, "little") + str(last).encode()
    i = ops.index(needle)
    j = ops.index(b"K\x01", i)
    ops = ops[:j] + b"J" + (100_000_000).to_bytes(4, "little") + ops[j + 2:]
    p = tmp / "unexpected_big.pt"
    _rezip(src, p, {pkl_name: lambda f: f.write(ops),
                    f"{pkl_name.rsplit('/', 1)[0]}/data/{last}": _zeros(400_000_000,
                                                                         chunk=4_000_000)})
    return Case(["compile", str(p), "--arch", ARCH, "-o", str(tmp / "ubk.snnir")], 1,
                "unexpected keys")


# ============================================================================ check / inspect / run
@case
def dataset_image_declaring_1e10_pixels(tmp):
    """An image folder holding a 100-byte PNG whose header declares 100,000 x 100,000 pixels:
    Pillow's decompression-bomb refusal was an internal error."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + \
            struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    folder = tmp / "bomb_images"
    for label in ("0", "1"):
        (folder / label).mkdir(parents=True, exist_ok=True)
    header = struct.pack(">IIBBBBB", 100000, 100000, 8, 0, 0, 0, 0)
    (folder / "0" / "a.png").write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 100001)) + chunk(b"IEND", b""))
    return Case(["check", str(CKPT), "--arch", ARCH, "--dataset", str(folder), "--quiet"], 1,
                "exceeds limit of")


@case
def labels_negative(tmp):
    return Case(["check", str(base_snnir(tmp)), "--inputs", inputs(tmp), "--labels",
                 npy(tmp, "ln.npy", np.array([0, -1]))], 1, "label -1")


@case
def labels_too_large(tmp):
    return Case(["check", str(base_snnir(tmp)), "--inputs", inputs(tmp), "--labels",
                 npy(tmp, "l1000.npy", np.array([1000, 1]))], 1, "label 1000")


@case
def labels_fraction(tmp):
    return Case(["check", str(base_snnir(tmp)), "--inputs", inputs(tmp), "--labels",
                 npy(tmp, "lf.npy", np.array([0.5, 1.0]))], 1, "label 0.5")


@case
def labels_wrong_length(tmp):
    return Case(["check", str(base_snnir(tmp)), "--inputs", inputs(tmp), "--labels",
                 npy(tmp, "lwl.npy", np.array([0, 1, 2]))], 1, "3 label(s) for a batch of 2")


@case
def labels_random_inputs_wrong_length(tmp):
    return Case(["check", str(base_snnir(tmp)), "--labels", npy(tmp, "l1.npy", np.array([1]))],
                1, "1 label(s) for a batch of 4")


@case
def labels_missing_file(tmp):
    return Case(["check", str(base_snnir(tmp)), "--labels", str(tmp / "nolabels.npy")], 1,
                "no such file")


@case
def labels_pickled(tmp):
    p = tmp / "lp.npy"
    np.save(p, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    return Case(["check", str(base_snnir(tmp)), "--labels", str(p)], 1, "lp.npy")


@case
def inputs_empty_batch(tmp):
    return Case(["check", str(base_snnir(tmp)), "--inputs", npy(tmp, "x0.npy", np.zeros((0, 4)))],
                1, "batch is empty")


@case
def inputs_wrong_shape(tmp):
    return Case(["check", str(base_snnir(tmp)), "--inputs", npy(tmp, "xw.npy", np.zeros((2, 5)))],
                1, "input must be")


@case
def inputs_scalar(tmp):
    return Case(["check", str(base_snnir(tmp)), "--inputs", npy(tmp, "xs.npy", np.float64(3))],
                1, "input must be")


@case
def inputs_nan(tmp):
    return Case(["check", str(base_snnir(tmp)), "--inputs",
                 npy(tmp, "xn.npy", np.full((2, 4), np.nan))], 1, "NaN")


@case
def inputs_complex(tmp):
    return Case(["check", str(base_snnir(tmp)), "--inputs",
                 npy(tmp, "xc.npy", np.ones((2, 4)) + 1j)], 1, "not numeric")


@case
def inputs_npz(tmp):
    p = tmp / "xz.npz"
    np.savez(p, x=np.ones((2, 4)))
    return Case(["check", str(base_snnir(tmp)), "--inputs", str(p)], 1, "archive")


@case
def check_batch_zero(tmp):
    return Case(["check", str(base_snnir(tmp)), "--batch", "0"], 1, "--batch")


@case
def check_batch_negative(tmp):
    return Case(["check", str(base_snnir(tmp)), "--batch", "-2"], 1, "--batch")


@case
def inspect_batch_zero(tmp):
    return Case(["inspect", str(base_snnir(tmp)), "--batch", "0"], 1, "--batch")


@case
def check_T_zero(tmp):
    return Case(["check", str(base_snnir(tmp)), "--T", "0"], 2, "--T")


@case
def check_T_negative(tmp):
    return Case(["check", str(base_snnir(tmp)), "--T", "-1"], 2, "--T")


@case
def inspect_T_zero(tmp):
    return Case(["inspect", str(base_snnir(tmp)), "--T", "0"], 2, "--T")


@case
def compile_T_zero_snnir(tmp):
    return Case(["compile", str(base_snnir(tmp)), "--T", "0", "-o", str(tmp / "ct0.snnir")], 2,
                "--T")


@case
def run_T_zero(tmp):
    return Case(["run", str(base_snnir(tmp)), "--inputs", inputs(tmp), "--T", "0", "-o",
                 str(tmp / "rt0.npy")], 2, "--T")


@case
def run_empty_batch_sim(tmp):
    return Case(["run", str(base_snnir(tmp)), "--inputs", npy(tmp, "x0r.npy", np.zeros((0, 4))),
                 "-o", str(tmp / "reb.npy")], 1, "batch is empty")


@case
def check_unknown_dtype(tmp):
    return Case(["check", str(base_snnir(tmp)), "--dtype", "float16"], 1, "float16")


@case
def check_unknown_target(tmp):
    return Case(["check", str(base_snnir(tmp)), "--target", "tpu"], 1, "unknown target 'tpu'")


@case
def max_memory_garbage(tmp):
    return Case(["--max-memory", "lots", "inspect", str(base_snnir(tmp))], 1, "memory size")


@case
def max_memory_zero(tmp):
    return Case(["--max-memory", "0", "inspect", str(base_snnir(tmp))], 1, "at least one byte")


@case
def max_memory_tiny(tmp):
    return Case(["--max-memory", "1K", "inspect", str(base_snnir(tmp))], 1, "--max-memory")


@case
def run_unknown_artifact(tmp):
    p = tmp / "model.bin"
    p.write_bytes(b"x")
    return Case(["run", str(p), "--inputs", inputs(tmp), "-o", str(tmp / "ua.npy")], 1,
                "cannot tell the target")


# ============================================================================ onnx
def onnx_artifact(tmp: Path) -> Path:
    out = tmp / "tiny_onnx"
    if not (out / "model.onnx").exists():
        from snncc.api import compile as compile_model

        compile_model(str(base_snnir(tmp)), target="onnx", out=str(out))
    return out


def _onnx_case(tmp, name: str, change, message: str, file: str = "model.onnx") -> Case:
    """``snncc run`` on the tiny ONNX artifact's ``file`` changed by ``change(model)``; the
    artifact the file came from stays as it was."""
    import onnx

    base = onnx_artifact(tmp) / file
    out = tmp / f"{name}.onnx"
    if not out.exists():
        model = onnx.load(base)
        change(model)
        onnx.save(model, out)
    return Case(["run", str(out), "--inputs", inputs(tmp), "-o", str(tmp / f"{name}.npy")], 1,
                message, untouched=[base])


def _set_metadata(key: str, value: str | None):
    """A change setting (None: removing) one metadata entry."""
    def change(model) -> None:
        kept = [(p.key, p.value) for p in model.metadata_props if p.key != key]
        del model.metadata_props[:]
        for k, v in kept + ([] if value is None else [(key, value)]):
            model.metadata_props.add(key=k, value=v)
    return change


def _metadata_case(name: str, key: str, value: str | None, message: str) -> None:
    """Register case ``onnx_metadata_<name>``: the model with metadata ``key`` set to
    ``value`` (None: removed)."""
    def make(tmp):
        return _onnx_case(tmp, name, _set_metadata(key, value), message)
    make.__name__ = f"onnx_metadata_{name}"
    case(make)


INPUTS_MESSAGE = "metadata 'snncc.inputs' must be a JSON list of inputs"
for _args in [
    ("inputs_not_json", "snncc.inputs", "{not json", INPUTS_MESSAGE),
    ("inputs_missing", "snncc.inputs", None, INPUTS_MESSAGE),
    ("inputs_names_only", "snncc.inputs", '["x"]', INPUTS_MESSAGE),
    # a declared shape the graph does not have (inputs of that shape would reach onnxruntime)
    ("input_shape_unlike_the_graph", "snncc.inputs",
     '[{"name": "x", "shape": [5], "static": true}]', "its 'x' is ['batch', 4], not ['batch', 5]"),
    ("T_negative", "snncc.T", "-3", "metadata 'snncc.T' must be a positive number of steps"),
    ("dtype_unknown", "snncc.dtype", "float16", "metadata 'snncc.dtype' must be one of"),
    ("output_the_graph_lacks", "snncc.outputs", '["ghost"]',
     "metadata 'snncc.outputs' must be a JSON list of the graph's output names"),
    ("neuron_the_graph_lacks", "snncc.neurons", '["ghost"]',
     "metadata 'snncc.neurons' must be a JSON list of neurons"),
]:
    _metadata_case(*_args)


@case
def onnx_step_state_of_3e9_membranes(tmp):
    """A state's shape is allocated as declared (at every batch): one the graph does not have
    is refused before anything is allocated."""
    import json

    state = [{"name": "lif:v", "shape": [3000000000], "batch_axis": 0, "init": 0.0}]
    return _onnx_case(tmp, "state_3e9", _set_metadata("snncc.state", json.dumps(state)),
                      "its 'lif:v' is ['batch', 3], not ['batch', 3000000000]",
                      file="model.step.onnx")


@case
def onnx_external_data_outside_its_directory(tmp):
    """A weight stored as external data at '../../etc/passwd' (onnx refuses to read it)."""
    def change(model) -> None:
        import onnx

        weight = model.graph.initializer[0]
        weight.ClearField("raw_data")
        weight.data_location = onnx.TensorProto.EXTERNAL
        weight.external_data.add(key="location", value="../../../../../etc/passwd")
    return _onnx_case(tmp, "external", change, "points outside the directory")


@case
def onnx_unknown_op(tmp):
    def change(model) -> None:
        model.graph.node[0].op_type = "NoSuchOp"
    return _onnx_case(tmp, "unknown_op", change, "onnxruntime cannot run this model")


@case
def onnx_truncated(tmp):
    out = tmp / "truncated.onnx"
    data = (onnx_artifact(tmp) / "model.onnx").read_bytes()
    out.write_bytes(data[:len(data) // 2])
    return Case(["run", str(out), "--inputs", inputs(tmp), "-o", str(tmp / "trunc.npy")], 1,
                "not a readable ONNX model")


# ============================================================================ lava
def lava_artifact(tmp: Path) -> Path:
    out = tmp / "tiny_lava"
    if not (out / "manifest.json").exists():
        from snncc.pipeline import for_target
        from snncc.targets import get_target

        tgt = get_target("lava")
        tgt.emit(for_target("lava", log=lambda s: None).run(tiny_graph()), out)
    return out


@case(isolate=True)
def lava_run_empty_batch(tmp):
    """The issue's hang: a batch of 0 in Lava."""
    return Case(["run", str(lava_artifact(tmp)), "--inputs", npy(tmp, "x0l.npy", np.zeros((0, 4))),
                 "-o", str(tmp / "lava0.npy")], 1, "batch is empty")


@case(isolate=True)
def lava_run_T_1e9(tmp):
    return Case(["run", str(lava_artifact(tmp)), "--inputs", inputs(tmp), "--T", "1000000000",
                 "-o", str(tmp / "lavat.npy")], 1, "memory budget")


@case
def lava_manifest_list(tmp):
    out = tmp / "bad_lava"
    out.mkdir(exist_ok=True)
    (out / "manifest.json").write_text("[1, 2]")
    np.savez(out / "weights.npz", a=np.zeros(1))
    return Case(["run", str(out), "--inputs", inputs(tmp), "--target", "lava", "-o",
                 str(tmp / "lm.npy")], 1, "bad_lava")


@case(isolate=True)
def lava_manifest_waiting_loop(tmp):
    """A manifest whose Add and zero-step Delay feed each other: each process waits for the
    other's message, and Lava waited forever (since Lava runs loops, processes are connected
    whatever their order)."""
    def loop(doc):
        doc["processes"][1:1] = [
            {"name": "d", "type": "Delay", "shape": [3], "arrays": [], "node": "",
             "params": {"steps": 0, "mute_from": 0, "mute_steps": 0}},
            {"name": "sum", "type": "BinaryOp", "shape": [3], "arrays": [], "node": "",
             "params": {"op": "Add", "shape_a": [3], "shape_b": [3], "attrs": {}}}]

        def port(p):
            return {"process": p, "port": "a_out" if p == "fc" else "s_out", "transforms": []}
        doc["connections"] = [c for c in doc["connections"] if c["to"] != "lif"] + [
            {"to": "sum", "port": "a_in0", "from": port("fc")},
            {"to": "sum", "port": "a_in1", "from": port("d")},
            {"to": "d", "port": "a_in", "from": port("sum")},
            {"to": "lif", "port": "a_in", "from": port("sum")}]
    return _lava_manifest_case(tmp, "loop_lava", loop,
                               "form a loop in which each waits for the one before it")


def _lava_manifest_case(tmp, name: str, change, message: str) -> Case:
    """The tiny Lava artifact with its manifest changed by ``change(doc)``."""
    import json
    import shutil

    out = tmp / name
    if not out.exists():
        shutil.copytree(lava_artifact(tmp), out)
        doc = json.loads((out / "manifest.json").read_text())
        change(doc)
        (out / "manifest.json").write_text(json.dumps(doc))
    return Case(["run", str(out), "--inputs", inputs(tmp), "-o", str(tmp / f"{name}.npy")], 1,
                message)


def _lava_weights_case(tmp, name: str, key: str, value, message: str) -> Case:
    """The tiny Lava artifact with array ``key`` of its weights.npz replaced by ``value``."""
    import shutil

    out = tmp / name
    if not out.exists():
        shutil.copytree(lava_artifact(tmp), out)
        arrays = dict(np.load(out / "weights.npz"))
        arrays[key] = value
        np.savez(out / "weights.npz", **arrays)
    return Case(["run", str(out), "--inputs", inputs(tmp), "-o", str(tmp / f"{name}.npy")], 1,
                message)


@case
def lava_weights_nan(tmp):
    return _lava_weights_case(tmp, "nan_lava", "fc/weights", np.full((3, 4), np.nan),
                              "process 'fc' array 'weights' holds NaN values")


@case
def lava_weights_infinite(tmp):
    return _lava_weights_case(tmp, "inf_lava", "fc/weights", np.full((3, 4), np.inf),
                              "process 'fc' array 'weights' holds infinite values")


@case
def lava_weights_of_more_neurons(tmp):
    """A Dense of 7 outputs feeding a neuron of 3: Lava's reshape error was an internal
    error."""
    return _lava_weights_case(tmp, "out7_lava", "fc/weights", np.zeros((7, 4)),
                              "'fc.a_out' -> 'lif.a_in' does not fit its shapes")


@case
def lava_weights_of_a_wider_input(tmp):
    return _lava_weights_case(tmp, "in9_lava", "fc/weights", np.zeros((3, 9)),
                              "input 'x' -> 'fc.s_in' does not fit its shapes")


@case
def lava_neuron_bias_of_another_shape(tmp):
    return _lava_weights_case(tmp, "bias_lava", "lif/bias_mant", np.zeros(4),
                              "process 'lif' (LIFReset) does not fit its shapes")


@case
def lava_manifest_reads_a_ghost(tmp):
    return _lava_manifest_case(
        tmp, "ghost_lava", lambda d: d["connections"][1]["from"].update(process="ghost"),
        "reads 'ghost.a_out', which is no process's out-port")


@case
def lava_manifest_unknown_port(tmp):
    return _lava_manifest_case(tmp, "port_lava", lambda d: d["connections"][1].update(
        port="bogus_in"), "has no in-port 'bogus_in'")


@case
def lava_manifest_unknown_type(tmp):
    return _lava_manifest_case(tmp, "type_lava", lambda d: d["processes"][1].update(
        type="Teleporter"), "unknown type 'Teleporter'")


@case
def lava_manifest_zero_dilation(tmp):
    """0 Lava steps per IR step would divide the phase by zero in every neuron."""
    return _lava_manifest_case(tmp, "dilation_lava", lambda d: d.update(dilation=0),
                               "dilation must be a positive integer, got 0")


@case
def lava_manifest_level_of_a_ghost(tmp):
    """A level computed by a Count process that is not there would fail at the end of a run."""
    return _lava_manifest_case(tmp, "level_lava", lambda d: d.update(
        levels={"ghost": ["nowhere", 1]}), "level 'ghost' must name a count with a value")


# ============================================================================ outputs (lead)
@case
def output_unwritable_dir(tmp):
    return Case(["compile", str(base_snnir(tmp)), "-o", "/proc/snncc-test/out.snnir"], 1,
                "/proc/snncc-test")


@case
def output_json_unwritable(tmp):
    return Case(["check", str(base_snnir(tmp)), "--json", "/proc/snncc-test.json"], 1,
                "/proc/snncc-test.json")


def big_snnir(tmp: Path) -> Path:
    """A graph of 512 KB of weights, as .snnir."""
    from snncc import ir, serialize
    from snncc.graph import Graph

    p = tmp / "big.snnir"
    if not p.exists():
        g = Graph("big", {"T": 2})
        g.add(ir.Input("x", input_shape=(256,), static=True))
        g.add(ir.Linear("fc", ("x",), weight=np.ones((256, 256))))
        g.add(ir.Output("out", ("fc",)))
        serialize.save(g.verify(), p)
    return p


@case(isolate=True)
def output_disk_full(tmp):
    """A write that fails part way (RLIMIT_FSIZE stands in for ENOSPC)."""
    c = Case(["compile", str(big_snnir(tmp)), "-o", str(tmp / "full" / "out.snnir")], 1,
             "out.snnir")
    c.fsize = 64 * 1024
    return c


@case(isolate=True)
def output_disk_full_nir(tmp):
    """The same through HDF5's own file I/O, whose failed system call is reported in its error
    message (the NIR writer raises it as the OSError it is)."""
    c = Case(["compile", str(big_snnir(tmp)), "-t", "nir", "-o", str(tmp / "full" / "out.nir")],
             1, "out.nir: cannot write (file too large)")
    c.fsize = 64 * 1024
    return c


@case(isolate=True)
def inputs_npy_header_lies(tmp):
    """--inputs .npy whose header declares 32 GB over 64 bytes of data (np.load allocates
    the declared size first): snncc.files.load_array should call limits.require_npy_fits."""
    import io
    head = np.lib.format.header_data_from_array_1_0(np.zeros((2, 4)))
    head["shape"] = (1000000000, 4)
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, head)
    p = tmp / "xlie.npy"
    p.write_bytes(buf.getvalue() + np.zeros(8).tobytes())
    return Case(["check", str(base_snnir(tmp)), "--inputs", str(p)], 1, "declares an array")


@case(isolate=True)
def lava_run_delay_1e8(tmp):
    """A Lava artifact with a 1e8-step delay: its FIFO is 1e8 x 3 floats per copy (4.8 GB,
    within the default budget on a 24 GB machine), refused under a 1 GB budget."""
    out = tmp / "delay_lava"
    if not (out / "manifest.json").exists():
        from snncc.pipeline import for_target
        from snncc.targets import get_target

        get_target("lava").emit(for_target("lava", log=lambda s: None).run(
            tiny_graph(delay=10 ** 8)), out)
    return Case(["--max-memory", "1G", "run", str(out), "--inputs", inputs(tmp), "-o",
                 str(tmp / "ld.npy")], 1, "memory budget")


@case
def nir_external_link(tmp):
    """A dataset that is a link into another file (nir.read would follow it)."""
    import h5py
    p = write_nir(tmp / "extlink.nir", nir_graph())
    with h5py.File(p, "a") as f:
        del f["node/nodes/fc/weight"]
        f["node/nodes/fc/weight"] = h5py.ExternalLink(str(tmp / "elsewhere.h5"), "w")
    return Case(["inspect", p], 1, "links to another file")


def _virtual_weight(path, copies, source_file, source_name) -> None:
    """The file's Affine weight replaced by a virtual dataset of ``copies`` of it, the first
    mapped from ``source_file:source_name`` (snncc's writer maps every one from this file)."""
    import h5py

    with h5py.File(path, "a") as f:
        w = f["node/nodes/fc/weight"][()]
        del f["node/nodes/fc/weight"]
        layout = h5py.VirtualLayout(shape=(copies, *w.shape), dtype=w.dtype)
        layout[0] = h5py.VirtualSource(source_file, source_name, shape=w.shape, dtype=w.dtype)
        f["node/nodes/fc"].create_virtual_dataset("weight", layout)


@case
def nir_virtual_from_another_file(tmp):
    """A weight whose data an HDF5 virtual dataset maps from another file."""
    import h5py
    p = write_nir(tmp / "vds_ext.nir", nir_graph())
    with h5py.File(tmp / "elsewhere_w.h5", "w") as f:
        f["w"] = np.ones((3, 4))
    _virtual_weight(p, 2, str(tmp / "elsewhere_w.h5"), "w")
    return Case(["inspect", p], 1, "maps its data from")


@case
def nir_virtual_from_nothing(tmp):
    """A virtual dataset whose source, in this file, does not exist (read back as the fill
    value)."""
    p = write_nir(tmp / "vds_none.nir", nir_graph())
    _virtual_weight(p, 2, ".", "snncc.repeated/0")
    return Case(["inspect", p], 1, "not a dataset stored in this file")


@case(isolate=True)
def nir_virtual_1e9_copies(tmp):
    """A virtual weight declaring 10^9 copies of a small matrix (about 100 GB) in a small
    file."""
    import h5py
    p = write_nir(tmp / "vds_huge.nir", nir_graph())
    with h5py.File(p, "a") as f:
        f["snncc.repeated/0"] = f["node/nodes/fc/weight"][()]
    _virtual_weight(p, 10 ** 9, ".", "snncc.repeated/0")
    return Case(["inspect", p], 1, "memory budget")


@case
def nir_nested_200_deep(tmp):
    """A chain of 200 nested NIRGraphs (1.2 MB): reading took 17 s (400 levels: 51 s, growing
    with the square of the depth); now refused before reading, in a second."""
    import h5py

    p = tmp / "deep.nir"
    with h5py.File(p, "w") as f:
        f.create_dataset("version", data="1.0")
        g = f.create_group("node")
        for depth in range(200, -1, -1):  # each level a graph: input -> inner -> output
            g.create_dataset("type", data="NIRGraph" if depth else "Affine")
            if not depth:
                g.create_dataset("weight", data=np.eye(3))
                g.create_dataset("bias", data=np.zeros(3))
                break
            nodes = g.create_group("nodes")
            for end in ("input", "output"):
                n = nodes.create_group(end)
                n.create_dataset("type", data=end.capitalize())
                n.create_dataset("shape", data=np.array([3]))
            g.create_dataset("edges", data=np.array([[b"input", b"inner"],
                                                     [b"inner", b"output"]]))
            g = nodes.create_group("inner")
    return Case(["inspect", str(p)], 1, "nested more than 32 levels deep")


@case
def nir_duplicate_edges(tmp):
    """A 32 KB file holding 300,000 copies of one edge (gzip): read as an Add of 300,000
    inputs, 18 s; edges are a set."""
    import h5py

    p = write_nir(tmp / "dup.nir", nir_graph())
    with h5py.File(p, "a") as f:
        del f["node/edges"]
        f.create_dataset("node/edges", compression="gzip", data=np.array(
            [[b"input", b"fc"]] * 300000 + [[b"fc", b"lif"], [b"lif", b"output"]]))
    return Case(["inspect", p], 1, "edge input -> fc appears more than once")


# ============================================================================ -o over a user's files
def _user_dir(tmp: Path, name: str) -> Path:
    d = tmp / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "thesis.tex").write_text("keep me")
    return d


def _compile_to(tmp: Path, target: str, out: Path, message: str) -> Case:
    return Case(["compile", str(base_snnir(tmp)), "-t", target, "-o", str(out)], 1, message,
                untouched=[out])


@case
def output_lava_over_user_directory(tmp):
    return _compile_to(tmp, "lava", _user_dir(tmp, "o_lava"), "not an empty directory")


@case
def output_onnx_over_user_directory(tmp):
    return _compile_to(tmp, "onnx", _user_dir(tmp, "o_onnx"), "not an empty directory")


@case
def output_lava_over_user_file(tmp):
    f = tmp / "o_file"
    f.write_text("my notes")
    return _compile_to(tmp, "lava", f, "exists and is a file")


@case
def output_onnx_over_user_file(tmp):
    f = tmp / "o_file2"
    f.write_text("my notes")
    return _compile_to(tmp, "onnx", f, "exists and is a file")


@case
def output_sim_over_foreign_snnir(tmp):
    f = tmp / "foreign.snnir"
    f.write_bytes(b"PK not snncc's")
    return _compile_to(tmp, "sim", f, "not a .snnir file")


@case
def output_nir_over_foreign_nir(tmp):
    f = tmp / "foreign.nir"
    f.write_bytes(b"\x89HDF\r\n\x1a\n someone's NIR")
    return _compile_to(tmp, "nir", f, "not a .nir file written by snncc")


@case
def output_artifact_holding_a_user_file(tmp):
    out = tmp / "o_art"
    if not out.exists():
        from snncc.api import compile as compile_model

        compile_model(str(base_snnir(tmp)), target="onnx", out=out)
    (out / "notes.md").write_text("mine")
    return _compile_to(tmp, "onnx", out, "did not write (notes.md)")


@case
def output_artifact_with_broken_marker(tmp):
    out = _user_dir(tmp, "o_marker")
    (out / "snncc-artifact.json").write_text("{not json")
    return _compile_to(tmp, "lava", out, "unreadable")


@case
def output_symlink(tmp):
    target = _user_dir(tmp, "o_real")
    link = tmp / "o_link"
    if not link.is_symlink():
        link.symlink_to(target)
    c = _compile_to(tmp, "onnx", link, "symbolic link")
    c.untouched = [target]
    return c


@case
def output_parent_is_a_file(tmp):
    f = tmp / "o_parent"
    f.write_text("x")
    return _compile_to(tmp, "sim", f / "model.snnir", "parent of the output path")


@case
def output_run_over_a_text_file(tmp):
    f = tmp / "results.txt"
    f.write_text("precious")
    return Case(["run", str(base_snnir(tmp)), "--inputs", inputs(tmp), "-o", str(f)], 1,
                "not a .npy array", untouched=[f])


@case
def output_check_json_over_a_text_file(tmp):
    f = tmp / "report.json"
    f.write_text("not json, my notes")
    return Case(["check", str(base_snnir(tmp)), "--json", str(f)], 1, "not a JSON file",
                untouched=[f])


@case
def output_inspect_plot_over_a_text_file(tmp):
    f = tmp / "plot.png"
    f.write_text("not a png")
    return Case(["inspect", str(base_snnir(tmp)), "--plot", str(f)], 1, "not a PNG image",
                untouched=[f])


@case
def output_demo_over_user_directory(tmp):
    out = tmp / "o_demo"
    _user_dir(tmp, "o_demo/lava")
    return Case(["demo", "-o", str(out), "--limit", "2"], 1, "not an empty directory",
                untouched=[out])
