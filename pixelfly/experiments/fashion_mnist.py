"""Fashion-MNIST from Debian's ``dataset-fashion-mnist`` package (IDX files, no download).

``read_idx(path)`` reads one IDX file (gzip or raw): magic ``0x00 0x00 <type> <ndim>``,
``ndim`` big-endian uint32 dimensions, then the data; only unsigned bytes (type ``0x08``)
are accepted, which is what (Fashion-)MNIST uses. Truncated or oversized payloads, a bad
magic and a bad shape raise ``ValueError`` naming the file.
"""
from __future__ import annotations

import gzip
import os
import struct
from typing import NamedTuple

import numpy as np
import torch

__all__ = ["FASHION_MNIST_DIR", "CLASSES", "read_idx", "FashionMNIST", "load_fashion_mnist"]

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
           "Bag", "Ankle boot")
_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
          "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


def read_idx(path) -> np.ndarray:
    """One IDX file (``.gz`` or raw) as a ``uint8`` array of the shape its header gives."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise ValueError(f"{path}: corrupt or truncated gzip stream ({e})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic {raw[:4]!r})")
    if raw[2] != 0x08:
        raise ValueError(f"{path}: IDX data type 0x{raw[2]:02x} unsupported (only unsigned bytes, 0x08)")
    ndim = raw[3]
    if ndim < 1:
        raise ValueError(f"{path}: IDX header declares 0 dimensions")
    head = 4 + 4 * ndim
    if len(raw) < head:
        raise ValueError(f"{path}: truncated IDX header ({len(raw)} bytes, need {head})")
    shape = struct.unpack(f">{ndim}I", raw[4:head])
    size = int(np.prod(shape, dtype=np.int64))
    if len(raw) - head != size:
        what = "truncated" if len(raw) - head < size else "has trailing bytes"
        raise ValueError(f"{path}: IDX payload {what}: {len(raw) - head} bytes for shape {shape}")
    return np.frombuffer(raw, dtype=np.uint8, offset=head).reshape(shape)


class FashionMNIST(NamedTuple):
    """``x_*``: float32 ``[N, 1, 28, 28]`` in ``[0, 1]``; ``y_*``: int64 ``[N]`` in ``0..9``."""
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def _split(directory, which):
    img_name, lab_name = _FILES[which]
    images = read_idx(os.path.join(directory, img_name))
    labels = read_idx(os.path.join(directory, lab_name))
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(f"{img_name}: expected images [N, 28, 28], got {images.shape}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise ValueError(f"{lab_name}: expected {len(images)} labels, got shape {labels.shape}")
    if labels.size and labels.max() > 9:
        raise ValueError(f"{lab_name}: label {labels.max()} out of range 0..9")
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    return x, torch.from_numpy(labels.astype(np.int64))


def load_fashion_mnist(directory=None) -> FashionMNIST:
    """The four IDX files of ``directory`` (default ``FASHION_MNIST_DIR``). Raises
    ``FileNotFoundError`` with the install command when they are absent."""
    directory = os.fspath(directory) if directory is not None else FASHION_MNIST_DIR
    missing = [n for pair in _FILES.values() for n in pair if not os.path.isfile(os.path.join(directory, n))]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST not found in {directory!r} (missing {', '.join(missing)}): install it with "
            "`apt-get install dataset-fashion-mnist` (Debian/Ubuntu) or pass the directory holding "
            "the four IDX .gz files")
    return FashionMNIST(*_split(directory, "train"), *_split(directory, "test"))
