"""The LRA tasks (pixelfly.experiments.lra_data) checked by independent evaluators, the
encoder with every attention, and the table end to end with --quick."""
import json
import math
import os

import numpy as np
import pytest
import torch

from pixelfly.experiments import lra_data as D
from pixelfly.experiments.__main__ import main
from pixelfly.experiments.lra_model import METHODS, LRAClassifier, attention_for

FMNIST = os.path.isdir(__import__("pixelfly.experiments.fashion_mnist").experiments.fashion_mnist.FASHION_MNIST_DIR)
KJV = any(os.path.isfile(p) for p in __import__("pixelfly.experiments.data").experiments.data.KJV_PATHS)

SYMBOL = {v: k for k, v in D.LISTOPS_TOKENS.items()}


def evaluate_listops(tokens) -> int:
    """Independent evaluator: a stack machine over the token ids (no recursion, no
    generator code): operators open a frame, digits append, ']' folds the frame."""
    stack = []
    for t in tokens:
        if t == D.PAD:
            break
        s = SYMBOL[int(t)]
        if s.startswith("["):
            stack.append((s, []))
        elif s == "]":
            op, args = stack.pop()
            srt = sorted(args)
            n = len(srt)
            med = srt[n // 2] if n % 2 else (srt[n // 2 - 1] + srt[n // 2]) / 2
            val = {"[MAX": srt[-1], "[MIN": srt[0], "[MED": int(med), "[SM": sum(args) % 10}[op]
            if not stack:
                return val
            stack[-1][1].append(val)
        else:
            stack[-1][1].append(int(s))
    raise AssertionError("unbalanced expression")


def test_listops_labels_match_an_independent_evaluator():
    t = D.listops_task(60, 10, 10, seq_len=96, seed=3)
    x = torch.cat([t.x_train, t.x_val, t.x_test])
    y = torch.cat([t.y_train, t.y_val, t.y_test])
    for row, label in zip(x.tolist(), y.tolist()):
        n = sum(v != D.PAD for v in row)
        assert 48 <= n <= 96 and all(v == D.PAD for v in row[n:])
        assert evaluate_listops(row) == label
    assert len(set(y.tolist())) > 3 and int(x.max()) < t.vocab


def test_listops_is_seeded_and_checked():
    a, b = D.listops_task(5, 1, 1, 64, seed=1), D.listops_task(5, 1, 1, 64, seed=1)
    assert torch.equal(a.x_train, b.x_train)
    with pytest.raises(ValueError, match="seq_len"):
        D.listops_task(5, 1, 1, seq_len=0)
    with pytest.raises(ValueError, match="n_train"):
        D.listops_task(True, 1, 1, seq_len=64)


def union_find_connected(img, a, b) -> bool:
    """Independent check: union-find over 8-neighbour pairs of path pixels."""
    H, W = img.shape
    parent = list(range(H * W))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i
    on = img >= 2
    for y in range(H):
        for x in range(W):
            if not on[y, x]:
                continue
            for dy, dx in ((0, 1), (1, -1), (1, 0), (1, 1)):
                v, u = y + dy, x + dx
                if 0 <= v < H and 0 <= u < W and on[v, u]:
                    parent[find(y * W + x)] = find(v * W + u)
    return find(a[0] * W + a[1]) == find(b[0] * W + b[1])


def test_pathfinder_labels_match_union_find():
    t = D.pathfinder_task(40, 4, 4, side=16, seed=2)
    assert t.seq_len == 256 and t.x_train.shape == (40, 256)
    x = torch.cat([t.x_train, t.x_val, t.x_test]).view(-1, 16, 16).numpy()
    y = torch.cat([t.y_train, t.y_val, t.y_test]).tolist()
    assert sum(y) == len(y) // 2                      # balanced
    for img, label in zip(x, y):
        ends = list(zip(*np.nonzero(img == 3)))
        assert len(ends) == 2 and set(np.unique(img)) <= {1, 2, 3}
        assert union_find_connected(img, ends[0], ends[1]) == bool(label)


# Verses whose words name their book, chapter and verse, so a window's source is known.
FAKE_BIBLE = "\n".join(
    f"{book}{c}:{v} " + " ".join(f"{book.lower()}{c}.{v}.{j}" for j in range(12))
    for book in ("Ge", "Exo", "Job", "Psa", "Mat", "Mark", "Rom", "Rev")
    for c in range(1, 4) for v in range(1, 9)).encode()


def test_bible_books_strip_references():
    books = D.bible_books(b"title line\n" + FAKE_BIBLE)
    assert [b for b, _ in books] == ["Ge", "Exo", "Job", "Psa", "Mat", "Mark", "Rom", "Rev"]
    assert all(b":" not in t for _, t in books) and books[0][1].startswith(b"ge1.1.0 ge1.1.1")
    with pytest.raises(ValueError, match="no verses"):
        D.bible_books(b"nothing here")


def _split_of(books, k):
    return {name: s[k] for name, s in D._book_splits(books)}


def test_text_windows_come_from_their_class_and_split():
    books = D.bible_books(FAKE_BIBLE)
    t = D.text_task(FAKE_BIBLE, 16, 4, 8, seq_len=64, seed=0)
    assert t.x_train.shape == (16, 64) and t.n_classes == 4
    groups = {0: ["Ge", "Exo"], 1: ["Job", "Psa"], 2: ["Mat", "Mark"], 3: ["Rom", "Rev"]}
    for k, (x, y) in enumerate(((t.x_train, t.y_train), (t.x_val, t.y_val), (t.x_test, t.y_test))):
        regions = _split_of(books, k)
        for row, label in zip(x.tolist(), y.tolist()):
            w = bytes(v - 1 for v in row)
            pool = b"".join(regions[b] for b in groups[label])
            assert w in pool                          # this class, this split only
    with pytest.raises(ValueError, match="seq_len"):
        D.text_task(FAKE_BIBLE, 4, 1, 1, seq_len=10 ** 6)


def test_retrieval_pairs():
    books = D.bible_books(FAKE_BIBLE)
    t = D.retrieval_task(FAKE_BIBLE, 20, 4, 4, seq_len=32, seed=1)
    assert t.pair and t.x_train.shape == (20, 2, 32) and t.y_train.sum() == 10
    regions = _split_of(books, 0)
    for pair, label in zip(t.x_train.tolist(), t.y_train.tolist()):
        a, b = (bytes(v - 1 for v in w) for w in pair)
        src_a = {n for n, r in regions.items() if a in r}
        src_b = {n for n, r in regions.items() if b in r}
        assert len(src_a) == 1 and len(src_b) == 1 and (src_a == src_b) == bool(label)
        assert a != b


def test_image_task_from_small_idx_files(tmp_path):
    from test_experiments import fake_dataset
    t = D.image_task(4, 2, 3, data_dir=fake_dataset(tmp_path, n_train=6, n_test=4))
    assert t.x_train.shape == (4, 784) and t.x_test.shape == (3, 784)
    assert int(t.x_train.min()) >= 1 and int(t.x_train.max()) <= 256 and t.vocab == 257


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("pair", [False, True])
def test_encoder_trains_with_every_attention(method, pair):
    torch.manual_seed(0)
    m = LRAClassifier(20, 3, 40, dim=16, depth=1, n_heads=2, mlp_dim=32, block=16, pair=pair,
                      attention=attention_for(method, 16, 4))
    assert m.padded_len == 48
    x = torch.randint(1, 20, (3, 2, 40) if pair else (3, 40))
    x[..., 35:] = D.PAD
    out = m(x)
    assert out.shape == (3, 3) and torch.isfinite(out).all()
    out.sum().backward()
    assert all(p.grad is not None for p in m.parameters() if p.requires_grad)
    with pytest.raises(ValueError, match="tokens"):
        m(torch.zeros(3, 60, dtype=torch.long) if not pair else torch.zeros(3, 40, dtype=torch.long))


def test_padding_does_not_change_the_pooled_states_of_dense_attention():
    """Mean pooling skips PAD positions (the attention itself sees them, as in every row)."""
    torch.manual_seed(0)
    m = LRAClassifier(20, 3, 32, dim=16, depth=1, n_heads=2, mlp_dim=32, block=16).eval()
    x = torch.randint(1, 20, (2, 32))
    assert torch.allclose(m.encode(x), m.encode(x[:, :32]))
    with pytest.raises(ValueError, match="unknown method"):
        attention_for("linformer", 16, 4)


@pytest.mark.skipif(not (FMNIST and KJV), reason="needs dataset-fashion-mnist and bible-kjv-text "
                    "(apt-get install dataset-fashion-mnist bible-kjv-text)")
def test_lra_quick(tmp_path):
    out = tmp_path / "lra"
    assert main(["lra", "--quick", "--out", str(out)]) == 0
    doc = json.loads((out / "lra.json").read_text())
    assert {r["method"] for r in doc["rows"]} == set(METHODS)
    assert {r["task"] for r in doc["rows"]} == {"ListOps", "Text", "Retrieval", "Image", "Pathfinder"}
    for r in doc["rows"]:
        assert 0 <= r["value"] <= 1 and r["speedup"] > 0 and math.isfinite(r["flops"]) and r["flops"] > 0
        assert (r["peak_mib"] > 0) if r["task"] == "ListOps" else r["peak_mib"] is None
        if r["method"] == "transformer":
            assert r["speedup"] == 1.0
    assert set(doc["average"]) == set(METHODS)
    md = (out / "lra.md").read_text()
    assert "| pixelfly |" in md and "Avg" in md
    for png in ("lra.png", "lra_curves.png", "lra_average.png"):
        assert (out / png).stat().st_size > 0
