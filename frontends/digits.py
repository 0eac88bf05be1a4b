"""The built-in default models' data: scikit-learn's 8x8 digits set (it ships with
scikit-learn, so nothing is downloaded), split once, the same way everywhere."""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: zoo architectures of the built-in default models, trained by examples/train_digits.py
DEFAULT_MODELS = ("digits-spikformer", "digits-meta-spikeformer")
DEFAULT_MODEL = DEFAULT_MODELS[0]
CHECKPOINTS = Path(__file__).resolve().parent.parent / "examples" / "checkpoints"


#: the indices of train_test_split(test_size=0.2, random_state=0, stratify=target), the split
#: the default models were trained on, in its order (tests/test_dataset_check.py checks them)
SPLIT = CHECKPOINTS / "digits-split.npz"


def digits_split(size: int = 8, test_fraction: float = 0.2, seed: int = 0):
    """((x_train, y_train), (x_test, y_test)); x is [N, 1, size, size] float64 (the 8x8 images
    repeated to size x size, a multiple of 8), pixel values / 16 standardised with the training
    set's mean and standard deviation. The default split is read from :data:`SPLIT` and the
    images from scikit-learn's own file, without importing scikit-learn (1.5 s of `snncc
    demo`); another split is scikit-learn's ``train_test_split``."""
    if size % 8:
        raise ValueError(f"size must be a multiple of 8, got {size}")
    images, target = _digits()
    if (test_fraction, seed) == (0.2, 0):
        with np.load(SPLIT) as split:
            train, test = split["train"], split["test"]
    else:
        from sklearn.model_selection import train_test_split

        train, test = train_test_split(np.arange(len(target)), test_size=test_fraction,
                                       random_state=seed, stratify=target)
    k = size // 8
    x = (images / 16.0)[:, None].repeat(k, axis=2).repeat(k, axis=3).astype(np.float64)
    xtr, xte = x[train], x[test]
    mean, std = xtr.mean(), xtr.std()
    return ((xtr - mean) / std, target[train]), ((xte - mean) / std, target[test])


def _digits() -> tuple[np.ndarray, np.ndarray]:
    """(images [1797, 8, 8] float64, target [1797]) as ``sklearn.datasets.load_digits`` reads
    them from the file scikit-learn ships."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")  # where it is installed, not imported
    found = [Path(p) / "datasets" / "data" / "digits.csv.gz"
             for p in (spec.submodule_search_locations or [])] if spec else []
    if not found or not found[0].is_file():
        from sklearn.datasets import load_digits

        d = load_digits()
        return d.images, d.target
    data = np.loadtxt(found[0], delimiter=",")
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int)


def digits_for(arch: str):
    """The split at the input size of the zoo entry ``arch``."""
    from snncc.frontends.zoo import ZOO

    return digits_split(size=ZOO[arch].input_shape[-1])


def checkpoint(arch: str) -> Path:
    return CHECKPOINTS / f"{arch}.pt"
