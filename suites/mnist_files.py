"""MNIST in IDX format: read, check, find, download.

Framework-neutral (numpy only). :func:`load_mnist` finds the four standard files (each with or
without ``.gz``), in this order:

1. the suite option ``data_dir`` (CLI ``--data-dir``);
2. the environment variable ``BENCH_MNIST_DIR``;
3. the cache, ``$XDG_CACHE_HOME/neural-ode-bench/mnist`` (default ``~/.cache/...``).

A folder named explicitly (1 or 2) is used as it is: if it lacks a file, that is an error rather
than a silent fall-back to other data. Without an explicit folder, missing files are downloaded
into the cache (when downloads are allowed), from the first mirror that answers, and kept only if
their md5 is the known one. Files found locally are not checked against the md5 (a local copy may
hold the same images in another order), but every file's IDX header, size and counts are.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import tempfile
import urllib.request
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.core.errors import BenchError

ENV_VAR = "BENCH_MNIST_DIR"
IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049
IMAGE_SHAPE = (28, 28)
NUM_CLASSES = 10

#: Role -> standard base name (each may also be stored with a ``.gz`` suffix).
FILES: dict[str, str] = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
#: md5 of the standard ``.gz`` downloads (checked only for files this module downloads).
MD5: dict[str, str] = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
DOWNLOAD_TIMEOUT_S = 60.0

#: The function used to open URLs (tests replace it).
urlopen: Callable[..., Any] = urllib.request.urlopen

# IDX element types: code -> big-endian numpy dtype.
_IDX_DTYPES: dict[int, str] = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4",
                               0x0E: ">f8"}
_GZIP_MAGIC = b"\x1f\x8b"


class MnistDataError(BenchError):
    """Missing, truncated or malformed MNIST files, or a failed download."""


@dataclasses.dataclass(frozen=True)
class MnistArrays:
    """The four arrays, as stored: images uint8 (N, 28, 28), labels uint8 (N,)."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    source: Path


# -------------------------------------------------------------------------------------------------
# IDX files
# -------------------------------------------------------------------------------------------------


def _read_bytes(path: Path) -> bytes:
    """The file's content, decompressed when it starts with the gzip magic bytes."""
    raw = path.read_bytes()
    if not raw.startswith(_GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as exc:
        raise MnistDataError(f"{path}: corrupt or truncated gzip data ({exc})") from None


def read_idx(path: str | os.PathLike[str], magic: int | None = None) -> np.ndarray:
    """Read an IDX file (gzip-compressed or not, told by its first bytes, not by its name).

    :param path: the file.
    :param magic: the expected magic number (2051 for MNIST images, 2049 for labels), or None.
    :raises MnistDataError: wrong magic number, unknown element type, or a size that does not
        match the header (a truncated file names the expected and the actual size).
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise MnistDataError(f"{path}: {len(data)} bytes, too short for an IDX header")
    found = int.from_bytes(data[:4], "big")
    if magic is not None and found != magic:
        raise MnistDataError(f"{path}: magic number {found}, expected {magic} "
                             f"({'images' if magic == IMAGES_MAGIC else 'labels'} file)")
    if data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise MnistDataError(f"{path}: not an IDX file (magic number {found})")
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise MnistDataError(f"{path}: truncated header: expected {header} bytes, "
                             f"got {len(data)}")
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "too long"
        raise MnistDataError(
            f"{path}: {what}: header says shape {shape}, so expected {expected} bytes "
            f"(uncompressed), got {len(data)}")
    # A native-order, writable copy (the decompressed bytes can then be freed).
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).astype(
        dtype.newbyteorder("="))


def write_idx(path: str | os.PathLike[str], array: np.ndarray, gzip: bool = False) -> Path:
    """Write ``array`` as an IDX file (for tests and tiny fixtures); returns the path."""
    array = np.asarray(array)
    codes = {np.dtype(v).newbyteorder("="): k for k, v in _IDX_DTYPES.items()}
    code = codes.get(array.dtype.newbyteorder("="))
    if code is None:
        raise ValueError(f"IDX cannot store dtype {array.dtype}")
    big = array.astype(np.dtype(_IDX_DTYPES[code]), copy=False)
    header = bytes([0, 0, code, array.ndim]) + b"".join(
        int(n).to_bytes(4, "big") for n in array.shape)
    payload = header + big.tobytes()
    if gzip:
        import gzip as _gzip

        payload = _gzip.compress(payload, mtime=0)
    path = Path(path)
    path.write_bytes(payload)
    return path


# -------------------------------------------------------------------------------------------------
# Finding, downloading and loading
# -------------------------------------------------------------------------------------------------


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/neural-ode-bench/mnist`` (default ``~/.cache/neural-ode-bench/mnist``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "neural-ode-bench" / "mnist"


def find_files(folder: Path) -> dict[str, Path | None]:
    """Role -> the file in ``folder`` (the raw name preferred over ``.gz``), or None."""
    found: dict[str, Path | None] = {}
    for role, base in FILES.items():
        found[role] = next((folder / name for name in (base, base + ".gz")
                            if (folder / name).is_file()), None)
    return found


def _missing(folder: Path) -> list[str]:
    return [FILES[role] for role, p in find_files(folder).items() if p is None]


def download_file(name: str, dest_dir: Path, mirrors: Sequence[str] = MIRRORS,
                  log: Callable[[str], None] = print) -> Path:
    """Download ``name`` (a ``.gz`` file) into ``dest_dir`` from the first mirror that gives the
    known md5. Written to a temporary file first, renamed when verified."""
    expected = MD5[name]
    dest_dir.mkdir(parents=True, exist_ok=True)
    problems: list[str] = []
    for mirror in mirrors:
        url = mirror + name
        fd, tmp_name = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=dest_dir)
        tmp = Path(tmp_name)
        try:
            digest = hashlib.md5(usedforsecurity=False)
            with os.fdopen(fd, "wb") as out, urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as resp:
                while chunk := resp.read(1 << 16):
                    digest.update(chunk)
                    out.write(chunk)
            if digest.hexdigest() != expected:
                problems.append(f"{url}: md5 {digest.hexdigest()}, expected {expected}")
                continue
            final = dest_dir / name
            os.replace(tmp, final)
            log(f"mnist: downloaded {url} -> {final}")
            return final
        except OSError as exc:  # URLError and HTTPError are OSErrors
            problems.append(f"{url}: {exc}")
        finally:
            tmp.unlink(missing_ok=True)
    raise MnistDataError(f"could not download {name}: " + "; ".join(problems))


def _how_to_supply() -> str:
    return (f"Put the four files ({', '.join(FILES.values())}, each optionally .gz) in a folder "
            f"and pass it with --data-dir DIR (or --set data_dir=DIR), or set {ENV_VAR}=DIR, "
            f"or copy them into the cache {cache_dir()}.")


def resolve_mnist_dir(data_dir: str | os.PathLike[str] | None = None, download: bool = True,
                      log: Callable[[str], None] = print) -> Path:
    """The folder holding the four MNIST files, downloading them into the cache if needed."""
    explicit = [(Path(data_dir).expanduser(), "data_dir option (--data-dir)")] if data_dir else []
    if not explicit and os.environ.get(ENV_VAR):
        explicit = [(Path(os.environ[ENV_VAR]).expanduser(), f"environment variable {ENV_VAR}")]
    if explicit:
        folder, origin = explicit[0]
        missing = _missing(folder)
        if not missing:
            return folder
        state = "does not exist" if not folder.is_dir() else f"lacks {', '.join(missing)}"
        raise MnistDataError(f"MNIST folder {folder} (from the {origin}) {state}. "
                             + _how_to_supply())
    cache = cache_dir()
    missing = _missing(cache)
    if not missing:
        return cache
    if not download:
        raise MnistDataError(
            f"MNIST files not found: no --data-dir given, {ENV_VAR} not set, and the cache "
            f"{cache} lacks {', '.join(missing)}; downloads are disabled (download=False). "
            + _how_to_supply())
    try:
        for base in missing:
            download_file(base + ".gz", cache, log=log)
    except MnistDataError as exc:
        raise MnistDataError(
            f"MNIST files not found: no --data-dir given, {ENV_VAR} not set, the cache {cache} "
            f"lacks {', '.join(missing)}, and the download failed ({exc}). "
            + _how_to_supply()) from None
    return cache


def load_folder(folder: str | os.PathLike[str]) -> MnistArrays:
    """Read and check the four files in ``folder``."""
    folder = Path(folder)
    paths = find_files(folder)
    missing = [FILES[r] for r, p in paths.items() if p is None]
    if missing:
        raise MnistDataError(f"{folder} lacks {', '.join(missing)}. " + _how_to_supply())
    arrays: dict[str, np.ndarray] = {}
    for split in ("train", "test"):
        ipath, lpath = paths[f"{split}_images"], paths[f"{split}_labels"]
        assert ipath is not None and lpath is not None
        images = read_idx(ipath, IMAGES_MAGIC)
        labels = read_idx(lpath, LABELS_MAGIC)
        if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != IMAGE_SHAPE:
            raise MnistDataError(f"{ipath}: expected uint8 images of shape (N, 28, 28), "
                                 f"got {images.dtype} {images.shape}")
        if labels.dtype != np.uint8 or labels.ndim != 1:
            raise MnistDataError(f"{lpath}: expected uint8 labels of shape (N,), "
                                 f"got {labels.dtype} {labels.shape}")
        if len(images) != len(labels):
            raise MnistDataError(f"{ipath} holds {len(images)} images but {lpath} holds "
                                 f"{len(labels)} labels")
        if labels.size and int(labels.max()) >= NUM_CLASSES:
            raise MnistDataError(f"{lpath}: label {int(labels.max())} is not a digit 0-9")
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels
    return MnistArrays(source=folder, **arrays)


def load_mnist(data_dir: str | os.PathLike[str] | None = None, download: bool = True,
               log: Callable[[str], None] = print) -> MnistArrays:
    """Find (or download) and read MNIST. See the module docstring for the lookup order."""
    return load_folder(resolve_mnist_dir(data_dir, download, log))
