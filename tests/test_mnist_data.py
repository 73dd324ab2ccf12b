"""The MNIST IDX reader, the folder lookup and the (mocked) download."""

from __future__ import annotations

import gzip
import hashlib
import io
import urllib.error
from pathlib import Path

import numpy as np
import pytest
from bench.suites import mnist_files
from bench.suites.mnist_files import (
    FILES,
    MnistDataError,
    load_folder,
    load_mnist,
    read_idx,
    write_idx,
)

from bench.core.errors import BenchError


def write_mnist(folder: Path, n_train: int = 12, n_test: int = 6, gz: bool = False,
                seed: int = 0) -> Path:
    """Four tiny, valid MNIST files in ``folder``."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        write_idx(folder / (FILES[f"{split}_images"] + suffix), images, gzip=gz)
        write_idx(folder / (FILES[f"{split}_labels"] + suffix), labels, gzip=gz)
    return folder


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    """No real cache, no environment variable, no network."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.delenv(mnist_files.ENV_VAR, raising=False)

    def no_network(url, timeout=None):
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(mnist_files, "urlopen", no_network)


@pytest.mark.parametrize("gz", [False, True])
def test_roundtrip_gz_and_raw(tmp_path, gz):
    array = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    path = write_idx(tmp_path / "x", array, gzip=gz)  # the name says nothing about the format
    assert path.read_bytes().startswith(b"\x1f\x8b") == gz
    out = read_idx(path, magic=2051)
    np.testing.assert_array_equal(out, array)
    assert out.flags.writeable


def test_other_dtypes_roundtrip(tmp_path):
    array = np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "f", array)), array)


@pytest.mark.parametrize("gz", [False, True])
def test_good_folder_loads(tmp_path, gz):
    data = load_folder(write_mnist(tmp_path / "m", gz=gz))
    assert data.train_images.shape == (12, 28, 28) and data.train_images.dtype == np.uint8
    assert data.test_labels.tolist() == [0, 1, 2, 3, 4, 5]


def test_truncated_file_names_file_and_sizes(tmp_path):
    folder = write_mnist(tmp_path / "m")
    path = folder / FILES["train_images"]
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(MnistDataError) as info:
        load_folder(folder)
    message = str(info.value)
    assert str(path) in message and "truncated" in message
    expected = 16 + 12 * 28 * 28
    assert f"expected {expected} bytes" in message and f"got {expected - 100}" in message


def test_truncated_gzip_is_an_error(tmp_path):
    folder = write_mnist(tmp_path / "m", gz=True)
    path = folder / (FILES["test_images"] + ".gz")
    path.write_bytes(path.read_bytes()[:-30])
    with pytest.raises(MnistDataError, match="truncated"):
        load_folder(folder)


def test_wrong_magic(tmp_path):
    folder = write_mnist(tmp_path / "m")
    # a labels file where the images should be
    (folder / FILES["train_images"]).write_bytes((folder / FILES["train_labels"]).read_bytes())
    with pytest.raises(MnistDataError, match="magic number 2049, expected 2051"):
        load_folder(folder)


def test_wrong_image_size(tmp_path):
    folder = write_mnist(tmp_path / "m")
    write_idx(folder / FILES["test_images"], np.zeros((6, 14, 14), np.uint8))
    with pytest.raises(MnistDataError, match=r"shape \(N, 28, 28\)"):
        load_folder(folder)


def test_image_label_count_mismatch(tmp_path):
    folder = write_mnist(tmp_path / "m")
    write_idx(folder / FILES["test_labels"], np.zeros(5, np.uint8))
    with pytest.raises(MnistDataError, match="holds 6 images but .* holds 5 labels"):
        load_folder(folder)


def test_lookup_order_option_then_env_then_cache(tmp_path, monkeypatch):
    option_dir = write_mnist(tmp_path / "option", n_test=1)
    env_dir = write_mnist(tmp_path / "env", n_test=2)
    cache = write_mnist(mnist_files.cache_dir(), n_test=3)
    monkeypatch.setenv(mnist_files.ENV_VAR, str(env_dir))
    assert len(load_mnist(option_dir, log=lambda m: None).test_labels) == 1
    assert len(load_mnist(None, log=lambda m: None).test_labels) == 2
    monkeypatch.delenv(mnist_files.ENV_VAR)
    assert load_mnist(None, log=lambda m: None).source == cache


def test_explicit_folder_missing_files_is_an_error(tmp_path):
    folder = write_mnist(tmp_path / "m")
    (folder / FILES["test_labels"]).unlink()
    with pytest.raises(BenchError, match="t10k-labels-idx1-ubyte") as info:
        load_mnist(folder)
    assert "--data-dir" in str(info.value)


def test_offline_error_says_where_it_looked_and_what_to_do(tmp_path):
    with pytest.raises(BenchError) as info:
        load_mnist(None, download=True, log=lambda m: None)
    message = str(info.value)
    for needle in (str(mnist_files.cache_dir()), "--data-dir", mnist_files.ENV_VAR,
                   "network disabled", "train-images-idx3-ubyte"):
        assert needle in message
    with pytest.raises(BenchError, match="downloads are disabled"):
        load_mnist(None, download=False)


class _FakeResponse(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _fake_mirror(tmp_path: Path, corrupt: set[str]) -> tuple[dict, list[str]]:
    """gz payloads for the four files, their md5s, and a list that records requested URLs."""
    source = write_mnist(tmp_path / "source", gz=True)
    payloads = {p.name: p.read_bytes() for p in source.iterdir()}
    md5 = {name: hashlib.md5(data, usedforsecurity=False).hexdigest()
           for name, data in payloads.items()}
    for name in corrupt:
        data = payloads[name]
        payloads[name] = data[:20] + bytes([data[20] ^ 0xFF]) + data[21:]
    return {"payloads": payloads, "md5": md5}, []


def test_download_into_cache_with_md5_check(tmp_path, monkeypatch):
    mirror, requested = _fake_mirror(tmp_path, corrupt=set())
    monkeypatch.setattr(mnist_files, "MD5", mirror["md5"])

    def opener(url, timeout=None):
        requested.append(url)
        return _FakeResponse(mirror["payloads"][url.rsplit("/", 1)[1]])

    monkeypatch.setattr(mnist_files, "urlopen", opener)
    data = load_mnist(None, download=True, log=lambda m: None)
    assert data.source == mnist_files.cache_dir()
    assert len(data.train_labels) == 12
    assert sorted(p.name for p in data.source.iterdir()) == sorted(mirror["payloads"])
    assert len(requested) == 4 and all(u.startswith(mnist_files.MIRRORS[0]) for u in requested)
    load_mnist(None, download=True)  # cached: no new request
    assert len(requested) == 4


def test_corrupted_download_is_rejected_and_next_mirror_tried(tmp_path, monkeypatch):
    name = FILES["train_images"] + ".gz"
    mirror, requested = _fake_mirror(tmp_path, corrupt={name})
    good = _fake_mirror(tmp_path / "good", corrupt=set())[0]["payloads"]
    monkeypatch.setattr(mnist_files, "MD5", mirror["md5"])

    def opener(url, timeout=None):
        requested.append(url)
        first = url.startswith(mnist_files.MIRRORS[0])
        return _FakeResponse((mirror if first else {"payloads": good})["payloads"][
            url.rsplit("/", 1)[1]])

    monkeypatch.setattr(mnist_files, "urlopen", opener)
    load_mnist(None, log=lambda m: None)
    assert [u for u in requested if u.endswith(name)] == [m + name for m in mnist_files.MIRRORS]
    # no stray temporary files in the cache
    assert not [p for p in mnist_files.cache_dir().iterdir() if p.name.endswith(".part")]


def test_corrupted_download_everywhere_is_an_error(tmp_path, monkeypatch):
    name = FILES["test_labels"] + ".gz"
    mirror, _ = _fake_mirror(tmp_path, corrupt={name})
    monkeypatch.setattr(mnist_files, "MD5", mirror["md5"])
    monkeypatch.setattr(mnist_files, "urlopen", lambda url, timeout=None: _FakeResponse(
        mirror["payloads"][url.rsplit("/", 1)[1]]))
    with pytest.raises(BenchError, match=f"{name}: md5 .*, expected {mirror['md5'][name]}"):
        load_mnist(None, log=lambda m: None)
    assert not (mnist_files.cache_dir() / name).exists()
    assert not [p for p in mnist_files.cache_dir().iterdir() if p.name.endswith(".part")]


def test_known_md5_table_matches_the_standard_files():
    assert mnist_files.MD5["t10k-images-idx3-ubyte.gz"] == "9fb629c4189551a2d022fa330f9573f3"
    assert set(mnist_files.MD5) == {base + ".gz" for base in FILES.values()}


SHARED = Path("/work/shared/data/mnist")


@pytest.mark.skipif(not SHARED.is_dir(), reason="no shared MNIST copy on this machine")
def test_shared_copy_test_files_have_the_known_md5():
    for base in (FILES["test_images"], FILES["test_labels"]):
        digest = hashlib.md5((SHARED / (base + ".gz")).read_bytes(), usedforsecurity=False)
        assert digest.hexdigest() == mnist_files.MD5[base + ".gz"]
    labels = read_idx(SHARED / (FILES["test_labels"] + ".gz"), magic=2049)
    assert labels.shape == (10000,)


def test_gzip_helper_output_is_deterministic(tmp_path):
    a = write_idx(tmp_path / "a", np.zeros(3, np.uint8), gzip=True).read_bytes()
    b = write_idx(tmp_path / "b", np.zeros(3, np.uint8), gzip=True).read_bytes()
    assert a == b and gzip.decompress(a)[:4] == (2049).to_bytes(4, "big")
