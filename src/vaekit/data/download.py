"""Finding dataset files on disk, and downloading them (checksum-verified, never half-written).

Where the files of a named dataset are looked up, in this order of precedence:
``data_dir`` when given (files in ``data_dir/<name>/`` or directly in ``data_dir``), else
``$VAEKIT_DATA_DIR/<name>``, else ``${XDG_CACHE_HOME:-~/.cache}/vaekit/<name>``.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import sys
import tempfile
import urllib.request
import zlib
from pathlib import Path

from ..errors import DataError

TIMEOUT_S = 20.0  # per socket operation; a stalled mirror should fail fast, not hang a training job

MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
BINARIZED_MNIST_URL = "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/"

# Accepted SHA-256 digests per file, of the DECOMPRESSED content ("raw") and/or of the .gz bytes.
# A file passes when either matches: gzip bytes depend on the compressor, the content does not.
# MNIST "raw": computed from the files in shared/data/mnist (whose decompressed md5s equal the
# canonical ones, e.g. train images 6bbc9ace898e44ae57da46a324031adb).
# Fashion-MNIST: Zalando publishes only md5s of the .gz files (train-images 8d4fb7e6c68d591d4c3dfef9ec88bf0d,
# train-labels 25c81989df183df01b3e8a0aad5dffbe, t10k-images bef4ecab320f06d8554ea6380940ec79,
# t10k-labels bb300cfdad3c16e7a12a480ee83cd310). The SHA-256s below are the ones many independent
# projects pin for the official files (same sizes: 26,421,880 / 29,515 / 4,422,102 / 5,148 bytes);
# for both label files we checked them (gz and raw) against copies whose md5 is the official one.
CHECKSUMS: dict[str, dict[str, dict[str, str]]] = {
    "mnist": {
        "train-images-idx3-ubyte.gz": {"raw": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"},
        "train-labels-idx1-ubyte.gz": {"raw": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"},
        "t10k-images-idx3-ubyte.gz": {"raw": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"},
        "t10k-labels-idx1-ubyte.gz": {"raw": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"},
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": {"gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
                                       "raw": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"},
        "train-labels-idx1-ubyte.gz": {"gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
                                       "raw": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"},
        "t10k-images-idx3-ubyte.gz": {"gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
                                      "raw": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"},
        "t10k-labels-idx1-ubyte.gz": {"gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
                                      "raw": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"},
    },
}


def cache_root() -> Path:
    """``${XDG_CACHE_HOME:-~/.cache}/vaekit``: where downloads go when no data dir is set."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "vaekit"


def candidate_folders(name: str, data_dir: str | os.PathLike | None) -> list[Path]:
    """Folders that may hold dataset ``name``'s files, best first; the first is where downloads go."""
    if data_dir is not None:
        d = Path(data_dir).expanduser()
        # <name>/ first, so `--data-dir shared/data` never picks up another dataset's same-named files
        return [d / name, d]
    env = os.environ.get("VAEKIT_DATA_DIR")
    if env:
        return [Path(env).expanduser() / name]
    return [cache_root() / name]


def fetch_url(url: str, dest: Path, timeout: float = TIMEOUT_S) -> None:
    """Stream ``url`` into the file ``dest`` (the downloader; tests replace it with a fake server)."""
    req = urllib.request.Request(url, headers={"User-Agent": "vaekit"})
    with urllib.request.urlopen(req, timeout=timeout) as resp, open(dest, "wb") as f:
        shutil.copyfileobj(resp, f, 1 << 20)


def file_digests(path: Path) -> dict[str, str]:
    """SHA-256 of the file's bytes ("gz") and, when it is gzip, of its decompressed content ("raw")."""
    data = path.read_bytes()
    out = {"gz": hashlib.sha256(data).hexdigest()}
    if data[:2] == b"\x1f\x8b":
        try:
            out["raw"] = hashlib.sha256(gzip.decompress(data)).hexdigest()
        except (EOFError, OSError, zlib.error):
            pass  # a broken gzip matches no "raw" digest
    return out


def _one_line(e: BaseException) -> str:
    reason = getattr(e, "reason", None) or e
    return " ".join(str(reason).split()) or type(e).__name__


def ensure_files(name: str, files: list[str], *, data_dir: str | os.PathLike | None = None,
                 download: bool = True, base_url: str | None = None,
                 checksums: dict[str, dict[str, str]] | None = None, hint: str = "") -> Path:
    """The folder that holds all of ``files`` for dataset ``name``, downloading missing ones.

    Files found on disk are used as they are (a local copy may be re-compressed, so only
    downloads are checked). A download goes to a temporary file in the target folder, is checked
    against ``checksums`` and only then renamed into place, so an interrupted or corrupt download
    never leaves a file that looks complete. Raises DataError (one line) when files are missing
    and cannot be downloaded; ``hint`` says where to get files that vaekit cannot download.
    """
    folders = candidate_folders(name, data_dir)
    for folder in folders:
        if all((folder / f).is_file() for f in files):
            return folder
    target = folders[0]
    missing = [f for f in files if not (target / f).is_file()]
    where = f"put {', '.join(files)} in {target}" + (" (or pass --data-dir DIR)" if data_dir is None else "")
    if not download or base_url is None:
        why = "downloads are off" if base_url is not None else hint or "vaekit cannot download them"
        raise DataError(f"{name} files not found in {' or '.join(map(str, folders))}; {where} ({why})")
    created = [d for d in (target, *target.parents) if not d.exists()]  # removed again if nothing arrives
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create {target} for the {name} download ({_one_line(e)}); {where}") from None
    try:
        _download(missing, target, base_url, checksums, where)
    except BaseException:
        for d in created:  # deepest first; stops at the first folder that is not empty
            try:
                d.rmdir()
            except OSError:
                break
        raise
    return target


def _download(missing: list[str], target: Path, base_url: str, checksums: dict[str, dict[str, str]] | None,
              where: str) -> None:
    for fname in missing:
        url = base_url + fname
        fd, tmp_name = tempfile.mkstemp(prefix=f".{fname}.", suffix=".part", dir=target)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            print(f"vaekit: downloading {url}", file=sys.stderr)
            try:
                fetch_url(url, tmp, TIMEOUT_S)
            except Exception as e:  # URLError, HTTPError, timeouts, resets: all mean "not obtained"
                raise DataError(f"could not download {url} ({_one_line(e)}); {where}") from None
            expected = (checksums or {}).get(fname)
            if expected is not None:
                got = file_digests(tmp)
                if not any(got.get(k) == v for k, v in expected.items()):
                    raise DataError(f"checksum mismatch for {url} (sha256 {got['gz']}); the download was "
                                    f"discarded; try again later or {where}")
            os.replace(tmp, target / fname)  # atomic: the file appears complete or not at all
        finally:
            tmp.unlink(missing_ok=True)
