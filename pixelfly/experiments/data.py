"""Offline data: nothing here downloads anything.

* ``load_digits_dataset``: scikit-learn's bundled 8x8 handwritten digits (1797 images),
  as normalised ``[N, 1, 8, 8]`` tensors with a seeded, stratified train/test split.
* ``load_text_corpus``: the King James Bible from Debian's ``bible-kjv-text`` package,
  returned as bytes. The package ships it as ``/usr/lib/bible.data``, a "Compressed Data
  File" (magic ``EC02``) of the ``bible`` program: a header, a table of offsets and
  68 windows of 64 KiB of text, each compressed separately with Unix ``compress``
  (LZW, up to 16-bit codes). ``decode_bible_data`` parses the container and hands each
  window to the system's ``gzip -dc`` (~0.4 s, 4.4 MB: one line per verse,
  ``"Ge1:1 In the beginning God created ..."``). Plain text and gzip files given by
  ``path=`` are read too.
* ``synthetic_text``: a deterministic pseudo-English corpus (a word-level Markov chain)
  for tests and as a fallback when the corpus is not installed.
* ``ByteLMDataset``, ``get_batches``: byte-level ``(input, target)`` windows for
  language modelling, the target being the input shifted by one byte;
  ``iterate_batches``: minibatches over tensors (e.g. the digits).
"""
from __future__ import annotations

import gzip
import os
import random
import struct
import subprocess
import zlib
from typing import Iterator, NamedTuple

import numpy as np
import torch

from .._memory import physical_memory

__all__ = [
    "DigitsSplit", "load_digits_dataset",
    "KJV_PATHS", "load_text_corpus", "decode_bible_data",
    "synthetic_text", "bytes_to_tensor", "split_text",
    "ByteLMDataset", "get_batches", "iterate_batches",
]


# ----------------------------------------------------------------------------- digits

class DigitsSplit(NamedTuple):
    """Train/test tensors: ``x_*: [N, 1, 8, 8]`` float32, ``y_*: [N]`` int64 in ``0..9``."""
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def load_digits_dataset(test_fraction: float = 0.2, seed: int = 0, normalize: bool = True,
                        dtype: torch.dtype = torch.float32) -> DigitsSplit:
    """scikit-learn's digits (bundled with scikit-learn, no download), split stratified by
    class with ``seed``. Pixels (``0..16``) are scaled to ``[0, 1]``; with ``normalize`` they
    are then standardised with the training set's mean and standard deviation (one scalar
    each, so test data never leaks into the statistics)."""
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as e:  # scikit-learn is an optional (test) dependency
        raise ImportError("load_digits_dataset needs scikit-learn: pip install scikit-learn") from e
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    digits = load_digits()
    x = digits.images.astype(np.float64) / 16.0          # [1797, 8, 8]
    y = digits.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_fraction, random_state=seed,
                                              stratify=y)
    if normalize:
        mean, std = x_tr.mean(), x_tr.std()
        x_tr, x_te = (x_tr - mean) / std, (x_te - mean) / std

    def images(a):
        return torch.from_numpy(np.ascontiguousarray(a)).to(dtype).unsqueeze(1)   # [N, 1, 8, 8]

    return DigitsSplit(images(x_tr), torch.from_numpy(y_tr), images(x_te), torch.from_numpy(y_te))


# ----------------------------------------------------------------------------- KJV text

#: Where Debian's ``bible-kjv-text`` package installs the text (checked in order).
KJV_PATHS = ("/usr/lib/bible.data",)

_EC02_MAGIC = b"EC02"
_LZW_MAGIC = b"\x1f\x9d"


def _uncompress(stream: bytes, what: str) -> bytes:
    """Decode one Unix ``compress`` (``.Z``, LZW) stream, header included, with the system's
    ``gzip -dc`` (which reads that format). A corrupt stream is a ``ValueError`` saying so;
    a missing ``gzip`` says what to install."""
    try:
        proc = subprocess.run(["gzip", "-dc"], input=stream, capture_output=True, check=False)
    except FileNotFoundError:
        raise FileNotFoundError("reading the bible data file needs the `gzip` program (it decodes "
                                "Unix compress streams): install it, e.g. `apt-get install gzip`") from None
    if proc.returncode != 0:
        why = proc.stderr.decode(errors="replace").strip().replace("gzip: stdin: ", "")
        raise ValueError(f"corrupt {what}: gzip -dc failed ({why or f'exit status {proc.returncode}'})")
    return proc.stdout


def decode_bible_data(raw: bytes) -> bytes:
    """Decode a ``bible`` "Compressed Data File" (``EC02``, as ``/usr/lib/bible.data``).

    Layout (big-endian ``uint32``): the magic/title string padded to byte 0x50; at 0x50 a
    zero word, the window size (65536) and the window count ``n``; then ``n + 1`` file
    offsets (window ``i`` is ``raw[off[i]:off[i+1]]``, the last offset is the file size);
    then the ``.Z`` header ``1f 9d <flags>`` (flags: low 5 bits the maximum code width,
    bit 7 block mode) shared by the windows, each an independent LZW stream, which
    ``gzip -dc`` decodes once the header is put in front of it.
    """
    if not raw.startswith(_EC02_MAGIC):
        raise ValueError("not a bible 'EC02' compressed data file")
    if len(raw) < 0x5C:
        raise ValueError(f"truncated bible data file: {len(raw)} bytes, shorter than its "
                         f"{0x5C}-byte header")
    _, window, n = struct.unpack(">III", raw[0x50:0x5C])
    table_end = 0x5C + 4 * (n + 1)
    if len(raw) < table_end:
        raise ValueError(f"truncated bible data file: {len(raw)} bytes, but its table of "
                         f"{n + 1} window offsets ends at byte {table_end}")
    offsets = struct.unpack(f">{n + 1}I", raw[0x5C:table_end])
    if offsets[-1] > len(raw):
        raise ValueError(f"truncated bible data file: {len(raw)} bytes, but its windows end at "
                         f"byte {offsets[-1]}")
    if offsets[0] < table_end or any(a > b for a, b in zip(offsets, offsets[1:])):
        raise ValueError("corrupt bible data file: its window offsets are out of order")
    header = raw[table_end:offsets[0]]
    if len(header) != 3 or header[:2] != _LZW_MAGIC:
        raise ValueError(f"corrupt bible data file: unexpected LZW header {header!r}")
    max_bits = header[2] & 0x1F
    if not 9 <= max_bits <= 16:
        raise ValueError(f"corrupt bible data file: LZW code width {max_bits} is not in 9..16")
    parts = []
    for i in range(n):
        text = _uncompress(header + raw[offsets[i]:offsets[i + 1]], f"bible data file (window {i})")
        if len(text) > window or (i < n - 1 and len(text) != window):
            raise ValueError(f"corrupt bible data file: window {i} decoded to {len(text)} bytes, "
                             f"expected {window}")
        parts.append(text)
    return b"".join(parts)


def load_text_corpus(path: str | os.PathLike | None = None) -> bytes:
    """The text corpus as bytes.

    ``path=None`` reads the King James Bible installed by Debian's ``bible-kjv-text``
    package (``KJV_PATHS``; 4,404,475 bytes, 31,102 verses). ``path`` may name that
    ``EC02`` file, a gzip file, or plain text. Raises ``FileNotFoundError`` when the file
    is missing (install the corpus with ``apt-get install bible-kjv-text`` or pass
    ``path=``; ``synthetic_text`` is an offline stand-in).
    """
    if path is None:
        found = [p for p in KJV_PATHS if os.path.isfile(p)]
        if not found:
            raise FileNotFoundError(
                "text corpus not found: the King James Bible is expected at "
                f"{' or '.join(KJV_PATHS)}. Install it with `apt-get install bible-kjv-text` "
                "(Debian/Ubuntu), or pass path= to a text or .gz file "
                "(pixelfly.experiments.data.synthetic_text() gives an offline stand-in).")
        path = found[0]
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"text corpus not found at {path!r}: pass path= to an existing text or .gz file, "
            "or install the King James Bible with `apt-get install bible-kjv-text`.")
    with open(path, "rb") as f:
        raw = f.read()
    if raw.startswith(b"\x1f\x8b"):
        try:
            return gzip.decompress(raw)
        except EOFError:
            raise ValueError(f"truncated gzip file {path!r}") from None
        except (gzip.BadGzipFile, zlib.error) as e:
            raise ValueError(f"corrupt gzip file {path!r}: {e}") from None
    if raw.startswith(_EC02_MAGIC):
        return decode_bible_data(raw)
    return raw


# ----------------------------------------------------------------------------- synthetic text

_WORDS = {
    "det": "the a this that every his her their our my no one".split(),
    "adj": ("old young great small good evil wise strong dark bright holy quiet "
            "ancient golden silent broken green far").split(),
    "noun": ("king man woman child city river house land people servant sea "
             "mountain bread fire voice heart night morning stone field garden road "
             "tree gate word name light water sword").split(),
    "verb": ("saw heard took gave found kept made built called loved sent followed "
             "remembered carried opened brought").split(),
    "ivb": "went came spoke slept wept rose rested waited returned stood".split(),
    "prep": "in upon unto from over under before after beside through".split(),
    "conj": "and but for then so yet".split(),
}

# word-class Markov chain: state -> [(next state, weight)]; "." ends a sentence.
_GRAMMAR = {
    "S": [("det", 6), ("noun_pl", 1)],
    "det": [("adj", 3), ("noun", 7)],
    "adj": [("adj", 1), ("noun", 6)],
    "noun": [("verb", 5), ("ivb", 4)],
    "noun_pl": [("verb", 1), ("ivb", 1)],
    "verb": [("odet", 1)],
    "odet": [("oadj", 2), ("onoun", 5)],
    "oadj": [("onoun", 1)],
    "onoun": [(".", 5), ("prep", 3), ("conj", 2)],
    "ivb": [(".", 4), ("prep", 5), ("conj", 2)],
    "prep": [("odet", 1)],
    "conj": [("det", 3), ("noun_pl", 1)],
}
_EMIT = {"odet": "det", "oadj": "adj", "onoun": "noun", "noun_pl": "noun"}
_PLURAL = {"man": "men", "woman": "women", "child": "children", "city": "cities", "people": "peoples"}


def synthetic_text(n_bytes: int = 100_000, seed: int = 0) -> bytes:
    """A deterministic pseudo-English ASCII corpus of exactly ``n_bytes`` bytes.

    Sentences come from a small word-class Markov chain (determiner, adjectives, noun,
    verb, object, prepositional phrases, conjunctions) over a ~130-word vocabulary, with
    Zipf-like word frequencies, capitalised first words, periods and newlines between
    paragraphs: enough structure for a byte-level model to learn in seconds. Same
    ``(n_bytes, seed)``, same bytes, on every platform (``random.Random``).
    """
    n_bytes = _count("n_bytes", n_bytes, 0)
    rng = random.Random(seed)
    zipf = {k: [1.0 / (i + 1) for i in range(len(v))] for k, v in _WORDS.items()}
    chunks, total = [], 0
    while total < n_bytes:
        words, state = [], "S"
        while True:
            nxt, wts = zip(*_GRAMMAR[state])
            state = rng.choices(nxt, wts)[0]
            if state == "." or len(words) > 24:
                break
            cls = _EMIT.get(state, state)
            word = rng.choices(_WORDS[cls], zipf[cls])[0]
            if state == "noun_pl":
                word = _PLURAL.get(word, word + "s")
            if words and words[-1] == "a" and word[0] in "aeiou":
                words[-1] = "an"
            words.append(word)
        sentence = " ".join(words)
        sentence = sentence[0].upper() + sentence[1:] + "."
        sep = "\n" if rng.random() < 0.2 else " "
        piece = (sentence + sep).encode("ascii")
        chunks.append(piece)
        total += len(piece)
    return b"".join(chunks)[:n_bytes]


# ----------------------------------------------------------------------------- batching

def _count(name: str, value, lo: int) -> int:
    """``value`` as an int ``>= lo``: TypeError for a non-integer (bool too), ValueError below."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < lo:
        raise ValueError(f"{name} must be >= {lo}, got {value}")
    return int(value)


def bytes_to_tensor(data: bytes | bytearray | torch.Tensor) -> torch.Tensor:
    """Bytes -> ``[N]`` int64 tensor of values ``0..255`` (tensors pass through as int64)."""
    if isinstance(data, torch.Tensor):
        return data.long()
    if len(data) == 0:
        return torch.empty(0, dtype=torch.long)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).long()


def split_text(data: bytes | torch.Tensor, val_fraction: float = 0.1):
    """Contiguous ``(train, val)`` split: the last ``val_fraction`` of the text is held out."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    cut = int(len(data) * (1.0 - val_fraction))
    return data[:cut], data[cut:]


class ByteLMDataset(torch.utils.data.Dataset):
    """Every window of a byte string: item ``i`` is ``(x, y)`` with ``x = data[i : i+L]``
    and ``y = data[i+1 : i+L+1]`` (int64 ``[L]``), for ``0 <= i < len(data) - L``.

    ``stride`` (default ``L``: non-overlapping windows) spaces the window starts."""

    def __init__(self, data: bytes | torch.Tensor, seq_len: int, stride: int | None = None):
        self.data = bytes_to_tensor(data)
        self.seq_len = _count("seq_len", seq_len, 1)
        self.stride = _count("stride", stride, 1) if stride is not None else self.seq_len
        if len(self.data) < self.seq_len + 1:
            raise ValueError(f"text of {len(self.data)} bytes is too short for seq_len={self.seq_len}")

    def __len__(self) -> int:
        return (len(self.data) - self.seq_len - 1) // self.stride + 1

    def __getitem__(self, i: int):
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        start = (i % len(self)) * self.stride
        chunk = self.data[start:start + self.seq_len + 1]
        return chunk[:-1], chunk[1:]


def get_batches(data: bytes | torch.Tensor, seq_len: int, batch_size: int,
                n_batches: int | None = None, seed: int = 0,
                device: torch.device | str | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Random byte windows for language modelling: yields ``(x, y)``, both int64
    ``[batch_size, seq_len]``, with ``y[:, t] = x[:, t + 1]`` (the next byte). Window starts
    are uniform over the text, drawn from a private generator seeded with ``seed``;
    ``n_batches=None`` never stops."""
    seq_len, batch_size = _count("seq_len", seq_len, 1), _count("batch_size", batch_size, 1)
    if n_batches is not None:
        n_batches = _count("n_batches", n_batches, 0)
    if batch_size * (seq_len + 1) * 8 > physical_memory():
        raise ValueError(f"batch_size={batch_size} windows of seq_len={seq_len} bytes would not "
                         "fit in this machine's memory")
    tokens = bytes_to_tensor(data)
    if len(tokens) - seq_len < 1:
        raise ValueError(f"text of {len(tokens)} bytes is too short for seq_len={seq_len}")
    return _batches(tokens, seq_len, batch_size, n_batches, seed, device)


def _batches(tokens, seq_len, batch_size, n_batches, seed, device):
    n_starts = len(tokens) - seq_len
    g = torch.Generator().manual_seed(seed)
    offsets = torch.arange(seq_len + 1)
    k = 0
    while n_batches is None or k < n_batches:
        starts = torch.randint(0, n_starts, (batch_size, 1), generator=g)
        chunk = tokens[starts + offsets]                              # [B, L + 1]
        x, y = chunk[:, :-1], chunk[:, 1:]
        if device is not None:
            x, y = x.to(device), y.to(device)
        yield x, y
        k += 1


def iterate_batches(*tensors: torch.Tensor, batch_size: int, shuffle: bool = True,
                    seed: int = 0, drop_last: bool = False) -> Iterator[tuple[torch.Tensor, ...]]:
    """One epoch of minibatches over tensors sharing their first dimension, e.g.
    ``for xb, yb in iterate_batches(x_train, y_train, batch_size=64, seed=epoch)``."""
    batch_size = _count("batch_size", batch_size, 1)
    if not tensors:
        raise TypeError("iterate_batches needs at least one tensor (tensors)")
    n = len(tensors[0])
    if any(len(t) != n for t in tensors):
        raise ValueError("all tensors must have the same length")
    return _epoch(tensors, n, batch_size, shuffle, seed, drop_last)


def _epoch(tensors, n, batch_size, shuffle, seed, drop_last):
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)) if shuffle else torch.arange(n)
    stop = n - (n % batch_size) if drop_last else n
    for i in range(0, stop, batch_size):
        idx = order[i:i + batch_size]
        yield tuple(t[idx] for t in tensors)
