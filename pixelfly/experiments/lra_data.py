"""The Long Range Arena tasks (Tay et al., 2021) at CPU scale, from data that needs no
download: two generated (ListOps, Pathfinder), three from Debian packages (the King James
Bible of ``bible-kjv-text`` for Text and Retrieval, ``dataset-fashion-mnist`` for Image).

Every task is a :class:`Task` of integer token tensors (``PAD = 0`` everywhere):

* **ListOps** (``listops``): nested ``[MAX``, ``[MIN``, ``[MED``, ``[SM`` expressions over
  the digits 0-9 with LRA's definition (at most 10 arguments per operator, depth at most
  10, ``MED`` the integer part of the median, ``SM`` the sum modulo 10), tokens ``0-9``,
  the four operators and ``]``; 10 classes (the value). LRA keeps 500..2000 tokens; here
  ``seq_len / 2 .. seq_len``.
* **Text** (``text``): ``seq_len`` bytes of the Bible's text (verse references removed),
  classified into four parts: the Law and the histories (Genesis-Esther), poetry and the
  prophets (Job-Malachi), the gospels and Acts, the letters and Revelation. Each book is
  split in order: its first 80% of bytes for training, 10% validation, 10% test, so no
  test window overlaps a training one.
* **Retrieval** (``retrieval``): two windows of ``seq_len`` bytes; label 1 if they come from
  the same book (non-overlapping places), 0 if from two different books (balanced).
  The model sees them as a pair (two towers with shared weights, as in LRA).
* **Image** (``image``): Fashion-MNIST images as sequences of 784 pixel intensities
  (tokens ``1 + value``), 10 classes.
* **Pathfinder** (``pathfinder``): ``side x side`` images (default 32, 1024 pixels) with
  curved paths of one-pixel width and two marked endpoints; label 1 if a path connects
  the endpoints (8-connected flood fill over the path pixels, which is the truth even
  where paths happen to touch), balanced; tokens 1 background, 2 path, 3 endpoint.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["Task", "PAD", "LISTOPS_TOKENS", "TEXT_CLASSES", "listops_expression", "listops_task",
           "bible_books", "text_task", "retrieval_task", "image_task", "pathfinder_image",
           "connected", "pathfinder_task", "TASKS"]

PAD = 0


@dataclass
class Task:
    """One task's splits: ``x_*`` int64 ``[N, L]`` (``[N, 2, L]`` for a pair task), ``y_*``
    int64 ``[N]``; ``vocab`` tokens including ``PAD = 0``."""
    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    vocab: int
    n_classes: int
    seq_len: int
    pair: bool = False


def _check_sizes(**sizes):
    for name, v in sizes.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")


# ----------------------------------------------------------------------------- ListOps

LISTOPS_OPS = ("[MAX", "[MIN", "[MED", "[SM")
#: token id of each ListOps symbol (digits 1..10, operators 11..14, "]" 15)
LISTOPS_TOKENS = {**{str(d): 1 + d for d in range(10)}, **{op: 11 + i for i, op in enumerate(LISTOPS_OPS)},
                  "]": 15}


def _apply(op: str, args: list[int]) -> int:
    if op == "[MAX":
        return max(args)
    if op == "[MIN":
        return min(args)
    if op == "[MED":
        return int(np.median(args))
    return sum(args) % 10


class _TooLong(Exception):
    pass


def listops_expression(rng: np.random.Generator, max_len: int, max_depth: int = 10,
                       max_args: int = 10, branch: float = 0.25) -> tuple[list[str], int]:
    """One random ListOps expression as ``(symbols, value)``: the root is an operator; each
    argument is another operator with probability ``branch`` (below ``max_depth``), else a
    digit. Raises ``_TooLong`` past ``max_len`` symbols (the caller draws again)."""
    out: list[str] = []

    def node(depth: int) -> int:
        if depth > 1 and (depth >= max_depth or rng.random() >= branch):
            d = int(rng.integers(10))
            out.append(str(d))
            if len(out) > max_len:
                raise _TooLong
            return d
        op = LISTOPS_OPS[int(rng.integers(len(LISTOPS_OPS)))]
        out.append(op)
        args = [node(depth + 1) for _ in range(int(rng.integers(2, max_args + 1)))]
        out.append("]")
        if len(out) > max_len:
            raise _TooLong
        return _apply(op, args)

    value = node(1)
    return out, value


def listops_task(n_train: int, n_val: int, n_test: int, seq_len: int, seed: int = 0) -> Task:
    """Generated ListOps, expressions of ``seq_len // 2 .. seq_len`` symbols."""
    _check_sizes(n_train=n_train, n_val=n_val, n_test=n_test, seq_len=seq_len)
    if seq_len < 8:
        raise ValueError(f"seq_len must be >= 8 for ListOps, got {seq_len}")
    rng = np.random.default_rng(seed)
    n = n_train + n_val + n_test
    x = np.zeros((n, seq_len), dtype=np.int64)
    y = np.zeros(n, dtype=np.int64)
    i = 0
    while i < n:
        try:
            sym, value = listops_expression(rng, seq_len)
        except _TooLong:
            continue
        if len(sym) < seq_len // 2:
            continue
        x[i, :len(sym)] = [LISTOPS_TOKENS[s] for s in sym]
        y[i] = value
        i += 1
    return _split("listops", x, y, n_train, n_val, vocab=16, n_classes=10, seq_len=seq_len)


def _split(name, x, y, n_train, n_val, **kw) -> Task:
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    a, b = n_train, n_train + n_val
    return Task(name, x[:a], y[:a], x[a:b], y[a:b], x[b:], y[b:], **kw)


# ----------------------------------------------------------------------------- the Bible

_VERSE = re.compile(rb"^([1-3]?[A-Za-z]+)\d+:\d+ (.*)$")
#: the four classes of the Text task, by the first book of each part (the KJV file's names)
TEXT_CLASSES = (("Law and histories", "Ge"), ("Poetry and prophets", "Job"),
                ("Gospels and Acts", "Mat"), ("Letters and Revelation", "Rom"))


def bible_books(text: bytes) -> list[tuple[str, bytes]]:
    """``[(book, text)]`` in order from the KJV text file's lines ``Ge1:1 In the beginning
    ...``: the verse references are removed and the verses joined by spaces."""
    books: list[tuple[str, list[bytes]]] = []
    for line in text.split(b"\n"):
        m = _VERSE.match(line.rstrip(b"\r"))
        if not m:
            continue
        name = m.group(1).decode()
        if not books or books[-1][0] != name:
            books.append((name, []))
        books[-1][1].append(m.group(2))
    if not books:
        raise ValueError("no verses found: expected lines like 'Ge1:1 In the beginning ...'")
    return [(name, b" ".join(v)) for name, v in books]


def _book_splits(books, fractions=(0.8, 0.1, 0.1)):
    """Each book cut in order into train / val / test byte ranges."""
    out = []
    for name, t in books:
        a = int(fractions[0] * len(t))
        b = a + int(fractions[1] * len(t))
        out.append((name, (t[:a], t[a:b], t[b:])))
    return out


def _text_classes(books) -> list[int]:
    starts = [first for _, first in TEXT_CLASSES]
    names = [name for name, _ in books]
    missing = [s for s in starts if s not in names]
    if missing:
        raise ValueError(f"the Bible text lacks the books {missing} that start the Text classes")
    cls, c = [], -1
    for name in names:
        if c + 1 < len(starts) and name == starts[c + 1]:
            c += 1
        cls.append(max(c, 0))
    return cls


def _bytes_tokens(b: bytes) -> np.ndarray:
    return np.frombuffer(b, dtype=np.uint8).astype(np.int64) + 1   # 1..256, PAD = 0


def _window(rng, t: bytes, L: int) -> np.ndarray:
    s = int(rng.integers(len(t) - L + 1))
    return _bytes_tokens(t[s:s + L])


def text_task(text: bytes, n_train: int, n_val: int, n_test: int, seq_len: int, seed: int = 0) -> Task:
    """The Text task from the Bible's text (``load_text_corpus()``): balanced classes."""
    _check_sizes(n_train=n_train, n_val=n_val, n_test=n_test, seq_len=seq_len)
    books = bible_books(text)
    cls = _text_classes(books)
    splits = _book_splits(books)
    rng = np.random.default_rng(seed)
    parts = []
    for k, n in enumerate((n_train, n_val, n_test)):
        pools = [b"".join(s[k] for (_, s), c in zip(splits, cls) if c == j) for j in range(len(TEXT_CLASSES))]
        short = [TEXT_CLASSES[j][0] for j, p in enumerate(pools) if len(p) < seq_len]
        if short:
            raise ValueError(f"seq_len={seq_len} is longer than the text of {short} in split {k}")
        y = np.arange(n) % len(TEXT_CLASSES)
        rng.shuffle(y)
        parts.append((np.stack([_window(rng, pools[c], seq_len) for c in y]), y.astype(np.int64)))
    (xa, ya), (xb, yb), (xc, yc) = parts
    return Task("text", *(torch.from_numpy(a) for a in (xa, ya, xb, yb, xc, yc)),
                vocab=257, n_classes=len(TEXT_CLASSES), seq_len=seq_len)


def retrieval_task(text: bytes, n_train: int, n_val: int, n_test: int, seq_len: int, seed: int = 0) -> Task:
    """Pairs of windows: same book (1) or two different books (0), balanced; ``x`` is
    ``[N, 2, seq_len]``. Books too short for two separate windows in a split are left out."""
    _check_sizes(n_train=n_train, n_val=n_val, n_test=n_test, seq_len=seq_len)
    splits = _book_splits(bible_books(text))
    rng = np.random.default_rng(seed)
    parts = []
    for k, n in enumerate((n_train, n_val, n_test)):
        pool = [s[k] for _, s in splits if len(s[k]) >= 2 * seq_len]
        if len(pool) < 2:
            raise ValueError(f"seq_len={seq_len}: fewer than two books have {2 * seq_len} bytes in split {k}")
        x = np.zeros((n, 2, seq_len), dtype=np.int64)
        y = np.arange(n) % 2
        rng.shuffle(y)
        for i in range(n):
            a = int(rng.integers(len(pool)))
            if y[i]:   # two non-overlapping windows of one book
                t = pool[a]
                s1 = int(rng.integers(len(t) - 2 * seq_len + 1))
                s2 = int(rng.integers(s1 + seq_len, len(t) - seq_len + 1))
                w = [t[s1:s1 + seq_len], t[s2:s2 + seq_len]]
                if rng.random() < 0.5:
                    w.reverse()
                x[i] = [_bytes_tokens(w[0]), _bytes_tokens(w[1])]
            else:
                b = (a + 1 + int(rng.integers(len(pool) - 1))) % len(pool)
                x[i] = [_window(rng, pool[a], seq_len), _window(rng, pool[b], seq_len)]
        parts.append((x, y.astype(np.int64)))
    (xa, ya), (xb, yb), (xc, yc) = parts
    return Task("retrieval", *(torch.from_numpy(a) for a in (xa, ya, xb, yb, xc, yc)),
                vocab=257, n_classes=2, seq_len=seq_len, pair=True)


# ----------------------------------------------------------------------------- Image

def image_task(n_train: int, n_val: int, n_test: int, data_dir=None, seed: int = 0) -> Task:
    """Fashion-MNIST as 784-pixel sequences (tokens ``1 + intensity``)."""
    from .fashion_mnist import load_fashion_mnist
    _check_sizes(n_train=n_train, n_val=n_val, n_test=n_test)
    d = load_fashion_mnist(data_dir)

    def tokens(x):   # x: float images in [0, 1] (the loader's scaling) -> 1..256
        return (x.reshape(len(x), -1) * 255).round().long() + 1

    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(d.x_train), generator=g)
    tr, va = perm[n_val:n_val + n_train], perm[:n_val]
    te = torch.randperm(len(d.x_test), generator=g)[:n_test]
    return Task("image", tokens(d.x_train[tr]), d.y_train[tr].long(), tokens(d.x_train[va]), d.y_train[va].long(),
                tokens(d.x_test[te]), d.y_test[te].long(), vocab=257, n_classes=10, seq_len=784)


# ----------------------------------------------------------------------------- Pathfinder

def _snake(rng, img, side, segments, seg_len=2.0):
    """Draw a curved path (random start and heading, small turns) into ``img``; returns its
    two end pixels."""
    y, x = rng.uniform(2, side - 2, size=2)
    angle = rng.uniform(0, 2 * np.pi)
    pts = [(int(round(y)), int(round(x)))]
    for _ in range(segments):
        angle += rng.normal(0, 0.45)
        ny, nx = y + seg_len * np.sin(angle), x + seg_len * np.cos(angle)
        if not (0 <= ny <= side - 1 and 0 <= nx <= side - 1):   # bounce off the border
            angle += np.pi
            continue
        for t in np.linspace(0, 1, 4)[1:]:
            pts.append((int(round(y + t * (ny - y))), int(round(x + t * (nx - x)))))
        y, x = ny, nx
    for p in pts:
        img[p] = 2
    return pts[0], pts[-1]


def connected(img: np.ndarray, a: tuple[int, int], b: tuple[int, int]) -> bool:
    """Whether pixels ``a`` and ``b`` are joined by non-background pixels (8-connected)."""
    on = img >= 2
    seen = np.zeros_like(on)
    stack = [a]
    seen[a] = True
    H, W = on.shape
    while stack:
        y, x = stack.pop()
        if (y, x) == tuple(b):
            return True
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                v, u = y + dy, x + dx
                if 0 <= v < H and 0 <= u < W and on[v, u] and not seen[v, u]:
                    seen[v, u] = True
                    stack.append((v, u))
    return False


def pathfinder_image(rng: np.random.Generator, want: int, side: int = 32, distractors: int = 2,
                     segments: int = 14) -> tuple[np.ndarray, int]:
    """One image (values 1 background, 2 path, 3 endpoint) with label ``want`` (1: the two
    endpoints are connected): endpoints at both ends of one path, or at the ends of two
    different paths; redrawn until the flood fill agrees with ``want``."""
    while True:
        img = np.ones((side, side), dtype=np.int64)
        ends = [_snake(rng, img, side, segments) for _ in range(2 + distractors)]
        a, b = (ends[0][0], ends[0][1]) if want else (ends[0][0], ends[1][int(rng.integers(2))])
        if a == b:
            continue
        img[a] = img[b] = 3
        if int(connected(img, a, b)) == want:
            return img, want


def pathfinder_task(n_train: int, n_val: int, n_test: int, side: int = 32, seed: int = 0) -> Task:
    """Generated Pathfinder, balanced, ``side * side`` pixels per sequence."""
    _check_sizes(n_train=n_train, n_val=n_val, n_test=n_test, side=side)
    if side < 8:
        raise ValueError(f"side must be >= 8, got {side}")
    rng = np.random.default_rng(seed)
    n = n_train + n_val + n_test
    y = np.arange(n) % 2
    rng.shuffle(y)
    x = np.stack([pathfinder_image(rng, int(t), side)[0].reshape(-1) for t in y])
    return _split("pathfinder", x, y.astype(np.int64), n_train, n_val, vocab=4, n_classes=2,
                  seq_len=side * side)


TASKS = ("listops", "text", "retrieval", "image", "pathfinder")
