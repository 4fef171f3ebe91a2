"""The offline data loaders under bad input: corrupt and truncated files say so, bad sizes
name the argument, nothing raises an internal IndexError."""
import gzip
import random

import pytest
import torch

from pixelfly.experiments import data
from test_models import _KJV_LZW_PREFIX, _ec02_file


def test_random_lzw_streams_decode_or_say_corrupt():
    """Each of 100 random byte streams in a bible data file decodes to something or raises
    ValueError('corrupt ...'), never another exception."""
    for seed in range(100):
        rng = random.Random(seed)
        stream = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400)))
        try:
            out = data.decode_bible_data(_ec02_file([stream]))
        except ValueError as e:
            assert "corrupt" in str(e), (seed, e)
        else:
            assert isinstance(out, bytes)


def test_first_code_must_be_a_byte():
    with pytest.raises(ValueError, match="corrupt bible data file .window 0.: gzip -dc failed"):
        data.decode_bible_data(_ec02_file([(300).to_bytes(2, "little") + b"\0" * 7]))


def test_missing_gzip_says_what_to_install(tmp_path, monkeypatch):
    path = tmp_path / "bible.data"
    path.write_bytes(_ec02_file([_KJV_LZW_PREFIX]))
    monkeypatch.setenv("PATH", str(tmp_path))            # no gzip on it
    with pytest.raises(FileNotFoundError, match="apt-get install gzip"):
        data.load_text_corpus(path)


@pytest.mark.parametrize("fraction", [0.01, 0.05, 0.08, 0.2, 0.5, 0.9, 0.999])
def test_truncated_bible_file_says_truncated(tmp_path, fraction):
    raw = _ec02_file([_KJV_LZW_PREFIX])
    path = tmp_path / "bible.data"
    path.write_bytes(raw[: int(len(raw) * fraction)])
    with pytest.raises(ValueError, match="truncated"):
        data.load_text_corpus(path)


def test_corrupt_bible_header_says_corrupt(tmp_path):
    raw = bytearray(_ec02_file([_KJV_LZW_PREFIX]))
    path = tmp_path / "bible.data"
    bad = bytearray(raw)
    bad[0x5C + 9] = 0x9E                         # LZW magic 1f 9d -> 1f 9e
    path.write_bytes(bytes(bad))
    with pytest.raises(ValueError, match="corrupt bible data file"):
        data.load_text_corpus(path)
    bad = bytearray(raw)
    bad[0x5C + 10] = 0x9F                        # code width 31
    path.write_bytes(bytes(bad))
    with pytest.raises(ValueError, match="corrupt bible data file: LZW code width 31"):
        data.load_text_corpus(path)


def test_truncated_and_corrupt_gzip(tmp_path):
    packed = gzip.compress(data.synthetic_text(5000))
    path = tmp_path / "c.gz"
    path.write_bytes(packed[: len(packed) // 2])
    with pytest.raises(ValueError, match="truncated gzip"):
        data.load_text_corpus(path)
    path.write_bytes(packed[:10] + bytes(len(packed) - 10))
    with pytest.raises(ValueError, match="corrupt gzip"):
        data.load_text_corpus(path)


TEXT = data.synthetic_text(1000)


@pytest.mark.parametrize("kwargs,name", [
    (dict(seq_len=8, batch_size=0), "batch_size"), (dict(seq_len=8, batch_size=-3), "batch_size"),
    (dict(seq_len=0, batch_size=2), "seq_len"), (dict(seq_len=-4, batch_size=2), "seq_len"),
    (dict(seq_len=8, batch_size=2, n_batches=-1), "n_batches"),
    (dict(seq_len=8.5, batch_size=2), "seq_len"), (dict(seq_len=8, batch_size=True), "batch_size"),
])
def test_get_batches_bad_sizes_name_the_argument(kwargs, name):
    with pytest.raises((ValueError, TypeError), match=name):
        data.get_batches(TEXT, **kwargs)                 # raised at the call, not at next()


def test_get_batches_still_batches():
    batches = list(data.get_batches(TEXT, 16, 3, n_batches=2, seed=1))
    assert len(batches) == 2 and batches[0][0].shape == (3, 16)
    assert torch.equal(batches[0][0][:, 1:], batches[0][1][:, :-1])
    assert list(data.get_batches(TEXT, 16, 3, n_batches=0)) == []


def test_iterate_batches_and_dataset_bad_sizes():
    x = torch.arange(10)
    for bs in (0, -2):
        with pytest.raises(ValueError, match="batch_size"):
            data.iterate_batches(x, batch_size=bs)
    with pytest.raises(TypeError, match="tensors"):
        data.iterate_batches(batch_size=2)
    assert [b[0].tolist() for b in data.iterate_batches(x, batch_size=4, shuffle=False)] == \
        [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    with pytest.raises(ValueError, match="seq_len"):
        data.ByteLMDataset(TEXT, 0)
    with pytest.raises(ValueError, match="stride"):
        data.ByteLMDataset(TEXT, 4, stride=-1)
    with pytest.raises(ValueError, match="n_bytes"):
        data.synthetic_text(-1)
