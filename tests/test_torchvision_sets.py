"""`check --dataset` on the files torchvision downloads (CIFAR-10, CIFAR-100, MNIST and its
siblings), read without torchvision and without running code from them: the values equal a
direct computation from the same files (pickles loaded by Python's own unpickler, IDX bytes
read by offset), the accuracy equals the model's own on them, and forged or broken files are
refused in one line (a pickle naming a function, an array forged to allocate, a gzip that
inflates past what its header declares, truncated or mislabelled files)."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from snncc import api
from snncc.dataset import TorchvisionDataset, open_dataset
from snncc.errors import FormatError, NoInputShapeError, ResourceError, SnnccError
from snncc.frontends.zoo import small
from snncc.models import load_model
from snncc.torchvision_sets import find_set

ROOT = Path(__file__).resolve().parents[1]
CKPT = ROOT / "examples" / "checkpoints" / "digits-spikformer.pt"
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
TRANSFORM = ["mean=" + ",".join(map(str, CIFAR_MEAN)), "std=" + ",".join(map(str, CIFAR_STD))]


def write_cifar(root: Path, n_test: int = 24, n_train: int = 10, hundred: bool = False,
                seed: int = 0) -> Path:
    """A torchvision download of CIFAR-10 (or -100), as its files are laid out and pickled
    (protocol 2, numpy's own array pickling), with random images."""
    rng = np.random.default_rng(seed)
    classes = 100 if hundred else 10
    folder = root / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    folder.mkdir(parents=True)
    key = "fine_labels" if hundred else "labels"
    splits = {"test": ["test"], "train": ["train"]} if hundred else \
        {"test": ["test_batch"], "train": [f"data_batch_{i}" for i in range(1, 6)]}
    for split, files in splits.items():
        for f in files:
            n = n_test if split == "test" else n_train
            d = {"batch_label": f"{f} of 1", key: rng.integers(0, classes, n).tolist(),
                 "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 "filenames": [f"img_{i}.png" for i in range(n)]}
            if hundred:
                d["coarse_labels"] = rng.integers(0, 20, n).tolist()
            (folder / f).write_bytes(pickle.dumps(d, protocol=2))
    names_key = "fine_label_names" if hundred else "label_names"
    meta = {names_key: [f"class{k}" for k in range(classes)]}
    (folder / ("meta" if hundred else "batches.meta")).write_bytes(pickle.dumps(meta, protocol=2))
    return folder


def idx_bytes(a: np.ndarray) -> bytes:
    return bytes([0, 0, 0x08, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape) + a.tobytes()


def write_mnist(root: Path, name: str = "MNIST", n: int = 30, gz: bool = True,
                seed: int = 0) -> Path:
    """``root/<name>/raw`` with the test split's IDX files, as torchvision leaves them."""
    from sklearn.datasets import load_digits

    d = load_digits()
    raw = root / name / "raw"
    raw.mkdir(parents=True)
    # digit images scaled up to 28x28, so the digits model classifies them after the resize
    imgs = np.stack([np.asarray(Image.fromarray((im * 15).astype(np.uint8)).resize(
        (28, 28), Image.NEAREST)) for im in d.images[-n:]])
    labels = d.target[-n:].astype(np.uint8)
    for fname, a in (("t10k-images-idx3-ubyte", imgs), ("t10k-labels-idx1-ubyte", labels)):
        data = idx_bytes(a)
        if gz:
            (raw / f"{fname}.gz").write_bytes(gzip.compress(data))
        else:
            (raw / fname).write_bytes(data)
    return raw


def reference_cifar(folder: Path, files: list[str], key: str = "labels"):
    """The set as torchvision reads it (its own pickle.load, trusted here)."""
    xs, ys = [], []
    for f in files:
        with open(folder / f, "rb") as fh:
            d = pickle.load(fh, encoding="latin1")
        xs.append(d["data"].reshape(-1, 3, 32, 32))
        ys += d[key]
    return np.concatenate(xs), np.asarray(ys)


def normalised(x_uint8: np.ndarray) -> np.ndarray:
    mean = np.asarray(CIFAR_MEAN).reshape(-1, 1, 1)
    std = np.asarray(CIFAR_STD).reshape(-1, 1, 1)
    return (x_uint8 / 255.0 - mean) / std


@pytest.fixture(scope="module")
def cifar_model():
    """A small Spikformer taking 3x32x32 images (randomised BN, neurons firing 5-95%)."""
    return small("spikformer-imagenet", seed=1).model


def direct_accuracy(model, x, y) -> float:
    with torch.no_grad():
        out = model.double().eval()(torch.as_tensor(x)).numpy()
    return float(np.mean(out.argmax(-1) == y))


@pytest.mark.parametrize("where", ["set folder", "torchvision root"])
def test_cifar10_test_and_train_splits_equal_torchvisions_reading(tmp_path, cifar_model, where):
    folder = write_cifar(tmp_path)
    spec = folder if where == "set folder" else tmp_path
    graph = api.load(cifar_model, torch.zeros(2, 3, 32, 32, dtype=torch.float64)).graph
    ds = open_dataset(str(spec), graph, batch=10, transform=TRANSFORM)
    assert isinstance(ds, TorchvisionDataset) and ds.classes == 10
    assert ds.class_names == [f"class{k}" for k in range(10)]
    x, y = reference_cifar(folder, ["test_batch"])
    got = list(ds.batches())
    assert [len(b.y) for b in got] == [10, 10, 4]
    np.testing.assert_array_equal(np.concatenate([b.x for b in got]), normalised(x))
    np.testing.assert_array_equal(np.concatenate([b.y for b in got]), y)
    train = open_dataset(f"{spec}:train", graph, batch=64, transform=TRANSFORM)
    xt, yt = reference_cifar(folder, [f"data_batch_{i}" for i in range(1, 6)])
    (b,) = list(train.batches())
    assert len(train) == 50
    np.testing.assert_array_equal(b.x, normalised(xt))
    np.testing.assert_array_equal(b.y, yt)


def test_cifar10_check_reports_the_models_own_accuracy_and_exact_spikes(tmp_path, cifar_model):
    folder = write_cifar(tmp_path)
    example = torch.zeros(2, 3, 32, 32, dtype=torch.float64)
    rep = api.check_dataset(cifar_model, str(folder), example, batch=12, transform=TRANSFORM)
    x, y = reference_cifar(folder, ["test_batch"])
    assert rep.samples == 24
    acc = direct_accuracy(cifar_model, normalised(x), y)
    for engine in ("pytorch", "simulator", "sim"):
        assert rep.accuracy[engine] == pytest.approx(acc, abs=1e-12)
    assert rep.min_agreement == 1.0
    rates = [layer["rate_reference"] for layer in rep.layers]
    assert rates and all(0.05 <= r <= 0.95 for r in rates), rates


def test_cifar100_fine_labels_and_a_model_of_another_size_resized(tmp_path):
    """CIFAR-100's 100 fine labels; a model taking 16x16 gets the images resized as an image
    folder's are (Pillow, bilinear)."""
    folder = write_cifar(tmp_path, hundred=True)
    case = small("spikformer-cifar", seed=2)  # 3x16x16, 10 classes
    with pytest.raises(SnnccError, match=r"CIFAR-100 test .*: 100 classes, but the model has 10 "
                                         "outputs"):
        api.check_dataset(case.model, str(tmp_path), case.inputs)
    case = small("spikformer-cifar", seed=2, num_classes=100)
    graph = api.load(case.model, case.inputs).graph
    ds = open_dataset(str(tmp_path), graph, batch=64)
    assert ds.classes == 100 and "CIFAR-100 test" in ds.name
    (b,) = list(ds.batches())
    x, y = reference_cifar(folder, ["test"], key="fine_labels")
    want = np.stack([np.asarray(Image.fromarray(a.transpose(1, 2, 0)).resize(
        (16, 16), Image.BILINEAR), dtype=np.float64).transpose(2, 0, 1) / 255 for a in x])
    np.testing.assert_array_equal(b.x, want)
    np.testing.assert_array_equal(b.y, y)
    rep = api.check_dataset(case.model, f"{tmp_path}:test", case.inputs, batch=8)
    assert rep.accuracy["pytorch"] == pytest.approx(direct_accuracy(case.model, want, y))
    assert rep.min_agreement == 1.0


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_idx_files_through_the_cli(tmp_path, gz, capsys):
    """MNIST's IDX files (gzipped as downloaded, or extracted) checked by the digits model,
    the 28x28 images resized to its 8x8 input; the report's accuracy equals the model's own
    on the same values."""
    from snncc.cli import main

    raw = write_mnist(tmp_path, gz=gz)
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    loaded = load_model(CKPT, "digits-spikformer")
    d = load_digits()  # the digits model's input standardisation (its training split's)
    tr, _ = train_test_split(d.images / 16.0, test_size=0.2, random_state=0, stratify=d.target)
    mean, std = tr.mean(), tr.std()
    transform = ["scale=240", f"mean={mean!r}", f"std={std!r}"]
    for spec in (tmp_path, tmp_path / "MNIST", raw):
        ds = open_dataset(str(spec), loaded.graph, batch=64, transform=transform)
        assert ds.name.startswith("MNIST test") and ds.class_names[3] == "3"
    (b,) = list(ds.batches())
    imgs = np.frombuffer((gzip.decompress if gz else bytes)(
        (raw / ("t10k-images-idx3-ubyte" + ".gz" * gz)).read_bytes())[16:], np.uint8)
    want = np.stack([np.asarray(Image.fromarray(a).resize((8, 8), Image.BILINEAR),
                                dtype=np.float64)[None] for a in imgs.reshape(-1, 28, 28)])
    want = (want / 240 - mean) / std
    np.testing.assert_array_equal(b.x, want)
    assert main(["check", str(CKPT), "--arch", "digits-spikformer", "--dataset", str(tmp_path),
                 *[a for t in transform for a in ("--transform", t)],
                 "--json", str(tmp_path / "r.json")]) == 0
    import json

    rep = json.loads((tmp_path / "r.json").read_text())
    acc = direct_accuracy(loaded.torch_model, want, b.y)
    assert acc > 0.5  # the resized digits are still digits to the model
    assert rep["engines"]["pytorch"]["accuracy"] == pytest.approx(acc)
    assert rep["min_agreement"] == 1.0
    # the trained model is sparse (layers at 3-17%): every layer fires, 5-95% on average
    rates = [layer["rate_reference"] for layer in rep["layers"]]
    assert min(rates) > 0.02 and 0.05 <= np.mean(rates) <= 0.95, rates
    capsys.readouterr()


def test_fashion_mnist_is_named_by_its_folder(tmp_path):
    write_mnist(tmp_path, name="FashionMNIST", n=5)
    fmt, folder = find_set(tmp_path)
    assert fmt.name == "FashionMNIST" and folder == tmp_path / "FashionMNIST" / "raw"
    fmt, _ = find_set(tmp_path / "FashionMNIST" / "raw")
    assert fmt.name == "FashionMNIST"


# --------------------------------------------------------------------------- refused


class _Runs:
    """Unpickling this calls os.system: a forged data batch."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _forge(folder: Path, name: str, payload: bytes) -> None:
    (folder / name).write_bytes(payload)


@pytest.fixture
def digits_graph():
    return load_model(CKPT, "digits-spikformer").graph


@pytest.fixture
def cifar_graph(cifar_model):
    return api.load(cifar_model, torch.zeros(2, 3, 32, 32, dtype=torch.float64)).graph


def test_a_pickle_naming_a_function_is_refused_without_running_it(tmp_path, cifar_graph):
    folder = write_cifar(tmp_path, n_train=2)
    marker = tmp_path / "ran"
    _forge(folder, "test_batch", pickle.dumps({"data": _Runs(marker), "labels": []}, protocol=2))
    with pytest.raises(FormatError, match="names posix.system, which a data batch does not "
                                          "hold"):
        open_dataset(str(folder), cifar_graph)
    assert not marker.exists()
    # the same file loaded by pickle itself would have run the command
    pickle.loads((folder / "test_batch").read_bytes())
    assert marker.exists()


def test_forged_arrays_and_broken_batches_are_refused(tmp_path, cifar_graph):
    folder = write_cifar(tmp_path, n_train=2)
    good = (folder / "test_batch").read_bytes()
    # numpy's _reconstruct asked for a huge array (numpy pickles ask for an empty one)
    huge = pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1]}, protocol=2)
    huge = huge.replace(b"K\x00\x85", b"J\x00\x00\x00\x40\x85", 1)
    cases = [
        (good[: len(good) // 2], FormatError, "not a readable data batch pickle"),
        (huge, FormatError, "reconstructed other than as numpy pickles one"),
        (pickle.dumps([1, 2], protocol=2), FormatError, "is a dict with 'data' and 'labels'"),
        (pickle.dumps({"data": np.zeros((2, 3072), np.float32), "labels": [0, 1]}, protocol=2),
         FormatError, "'data' is float32 [2, 3072], not uint8"),
        (pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [0]}, protocol=2),
         FormatError, "2 images but 1 labels"),
        (pickle.dumps({"data": np.zeros((1, 3072), np.uint8), "labels": [10]}, protocol=2),
         FormatError, "a label outside 0..9"),
    ]
    assert b"K\x00\x85" in pickle.dumps(np.zeros(2, np.uint8), protocol=2)  # (0,) as pickled
    for payload, err, message in cases:
        _forge(folder, "test_batch", payload)
        with pytest.raises(err, match=message.replace("[", r"\[").replace("(", r"\(")):
            list(open_dataset(str(folder), cifar_graph).batches())


def test_broken_idx_files_are_refused(tmp_path, digits_graph):
    raw = write_mnist(tmp_path, n=4, gz=False)
    images = raw / "t10k-images-idx3-ubyte"
    good = images.read_bytes()
    header = bytes([0, 0, 8, 3]) + struct.pack(">3I", 4, 28, 28)
    cases = [
        (good[:-1], FormatError, "holds fewer"),
        (good + b"\0", FormatError, "holds more"),
        (b"\0\0\x0d\x03" + good[4:], FormatError, "not an IDX file of unsigned bytes"),
        (header[:10], FormatError, "truncated IDX header"),
        (bytes([0, 0, 8, 3]) + struct.pack(">3I", 2 ** 31, 2 ** 31, 28), ResourceError,
         "more than the memory budget"),
    ]
    for payload, err, message in cases:
        images.write_bytes(payload)
        with pytest.raises(err, match=message):
            open_dataset(str(raw), digits_graph, transform=["scale=240"])
    # a gzip that declares 4 images and inflates to far more is read only as far as declared
    images.unlink()
    bomb = raw / "t10k-images-idx3-ubyte.gz"
    with gzip.open(bomb, "wb") as f:
        f.write(header + bytes(4 * 28 * 28))
        for _ in range(64):
            f.write(bytes(1 << 20))
    assert bomb.stat().st_size < 200_000
    with pytest.raises(FormatError, match="holds more"):
        open_dataset(str(raw), digits_graph)
    bomb.write_bytes(b"not gzip at all")
    with pytest.raises(FormatError, match="not a readable IDX file"):
        open_dataset(str(raw), digits_graph)


def test_ambiguous_or_mismatched_sets_are_one_line_errors(tmp_path, digits_graph, cifar_graph,
                                                          capsys):
    from snncc.cli import main

    write_cifar(tmp_path, n_train=2)
    write_mnist(tmp_path, n=4)
    (tmp_path / "elsewhere" / "a").mkdir(parents=True)
    with pytest.raises(SnnccError, match="holds several data sets .CIFAR-10 in .*, MNIST in"):
        open_dataset(str(tmp_path), digits_graph)
    with pytest.raises(SnnccError, match="CIFAR-10 has 3-channel images; the model takes 1"):
        open_dataset(str(tmp_path / "cifar-10-batches-py"), digits_graph)
    with pytest.raises(SnnccError, match="a split .':train'. is taken by digits and the "
                                         "torchvision sets"):
        open_dataset(f"{tmp_path / 'elsewhere'}:train", digits_graph)
    argv = ["check", str(CKPT), "--arch", "digits-spikformer", "--dataset",
            f"{tmp_path / 'MNIST'}:train"]
    assert main(argv) != 0
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("snncc: error:") and "MNIST train split needs" in line


def test_mnist_flattened_for_snntorch_tutorial_network(tmp_path):
    """snnTorch's tutorials feed MNIST to a network of Linear layers as [784] vectors: a model
    taking that input gets the images flattened (after the transform); its T comes from its
    own loop over time and both its outputs, spikes and membranes, are compared."""
    snn = pytest.importorskip("snntorch")

    class Net(torch.nn.Module):  # tutorial 5's network, smaller
        def __init__(self):
            super().__init__()
            self.fc1, self.lif1 = torch.nn.Linear(784, 64), snn.Leaky(beta=0.95)
            self.fc2, self.lif2 = torch.nn.Linear(64, 10), snn.Leaky(beta=0.95)

        def forward(self, x):
            mem1, mem2 = self.lif1.init_leaky(), self.lif2.init_leaky()
            spk_rec, mem_rec = [], []
            for _ in range(5):
                spk1, mem1 = self.lif1(self.fc1(x), mem1)
                spk2, mem2 = self.lif2(self.fc2(spk1), mem2)
                spk_rec.append(spk2)
                mem_rec.append(mem2)
            return torch.stack(spk_rec), torch.stack(mem_rec)

    raw = write_mnist(tmp_path, n=20)
    torch.manual_seed(0)
    model = Net().double()
    with torch.no_grad():
        model.fc1.weight.mul_(8)
        model.fc2.weight.mul_(4)
    transform = ["mean=0.1307", "std=0.3081"]  # the tutorials' normalisation
    loaded = api.load(model, input_shape=(784,))
    assert loaded.graph.meta["T"] == 5
    ds = open_dataset(str(tmp_path), loaded.graph, batch=64, transform=transform)
    (b,) = list(ds.batches())
    imgs = np.frombuffer(gzip.decompress((raw / "t10k-images-idx3-ubyte.gz").read_bytes())[16:],
                         np.uint8)
    np.testing.assert_array_equal(b.x, (imgs.reshape(20, 784) / 255 - 0.1307) / 0.3081)
    rep = api.check_dataset(model, str(tmp_path), input_shape=(784,), transform=transform)
    assert rep.samples == 20 and rep.min_agreement == 1.0
    # declaring no input shape, it takes the set's: 1x28x28 fails in its Linear, 784 traces
    again = api.check_dataset(model, str(tmp_path), transform=transform)
    assert again.accuracy == rep.accuracy and again.min_agreement == 1.0
    assert rep.output_max_abs_diff_sim == rep.output_max_abs_diff_target == 0.0
    # a difference in the second output (the membranes) alone is in the set's report
    forward = model.forward
    model.forward = lambda x: (lambda s, m: (s, m + 0.5))(*forward(x))
    shifted = api.check_dataset(loaded, str(tmp_path), transform=transform)
    assert shifted.min_agreement == 1.0
    assert shifted.output_max_abs_diff_sim == pytest.approx(0.5)
    assert shifted.output_max_abs_diff_target == pytest.approx(0.5)
    (tmp_path / "folder" / "a").mkdir(parents=True)
    with pytest.raises(NoInputShapeError):  # an image folder's images take the model's shape
        api.check_dataset(model, str(tmp_path / "folder"))
    rates = [layer["rate_reference"] for layer in rep.layers]
    assert all(0.05 <= r <= 0.95 for r in rates), rates
