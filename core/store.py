"""The model store: on-disk layout, atomic publish and the "current" pointer. What metadata.json and
current.json hold is core/metadata.py's; how a file of the store is read safely, core/safefiles.py's.

Layout (one writer per version, readers never block)::

    <root>/<name>/<version>/        a published version, complete or absent, never overwritten
        model.keras                 the trained Keras model (takes raw 0-255 pixels)
        model.onnx                  optional fast serving artifact, parity-checked against model.keras
        probe.npz                   probe inputs and the Keras outputs on them (checks engines at load)
        ood.npz                     the out-of-distribution detector (core/ood.py); optional
        metadata.json               ModelMetadata below
        history.csv                 per-epoch training log
        learning_curves.png         loss and accuracy, train vs validation
        reliability.png             confidence vs accuracy before and after calibration
    <root>/<name>/current.json      which version is served: {"version": N, "promoted_at": ..., "reason": ...}
    <root>/<name>/.lock             taken by writers (publish, promote) only
    <root>/<name>/.staging-*/       versions being written (their writer locks .writer inside); invisible
                                    to readers; removed by the next publish once their writer is gone

Publishing renames a fully written, fsynced staging directory to its version number; promotion
replaces current.json with os.replace. Both are atomic on a POSIX filesystem, so a reader sees the
old state or the new one, never a mixture.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from pydantic import ValidationError

from core.metadata import MAX_VERSION, CurrentPointer, ModelMetadata, VersionSummary
from core.safefiles import describe, fsync_dir, fsync_file, held, read_small_file

MODEL_FILE = "model.keras"
ONNX_FILE = "model.onnx"
PROBE_FILE = "probe.npz"
OOD_FILE = "ood.npz"
METADATA_FILE = "metadata.json"
HISTORY_FILE = "history.csv"
CURVES_FILE = "learning_curves.png"
RELIABILITY_FILE = "reliability.png"
CURRENT_FILE = "current.json"
LOCK_FILE = ".lock"
STAGING_PREFIX = ".staging-"
STAGING_LOCK = ".writer"  # locked by the job writing the staging directory, while it lives
# Version numbers are folder names of at most 9 digits: they fit every integer type a reader may use.
# Store files are small; a larger one is refused rather than read into memory.
MAX_POINTER_BYTES = 64 * 1024
MAX_METADATA_BYTES = 4 * 1024 * 1024
# The PNG figures a version carries for people (the page, a file browser); FIGURE_FILES is what may be read.
FIGURE_FILES = (CURVES_FILE, RELIABILITY_FILE)
MAX_FIGURE_BYTES = 8 * 1024 * 1024
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class StoreError(Exception):
    """The store or one of its versions cannot be read or written as asked."""


class VersionNotFound(StoreError):
    """The requested version does not exist in the store."""


def model_names(root: Path | str) -> list[str]:
    """The models of a store root: its plain-named folders."""
    try:
        entries = list(os.scandir(root))
    except OSError:
        return []
    return sorted(e.name for e in entries if not e.name.startswith(".") and e.is_dir(follow_symlinks=False))


class ModelStore:
    """One model name inside a store root: its versions and which one is current."""

    def __init__(self, root: Path | str, name: str) -> None:
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"model name must be a plain directory name, received {name!r}")
        self.root = Path(root)
        self.name = name
        self.directory = self.root / name

    # ---- reading (never takes the lock) ----

    def versions(self) -> list[int]:
        if not self.directory.is_dir():
            return []
        return sorted(int(p.name) for p in self.directory.iterdir() if is_version_name(p.name) and p.is_dir())

    def version_dir(self, version: int) -> Path:
        if not 1 <= version <= MAX_VERSION:
            raise VersionNotFound(
                f"model {self.name!r} has no version {version}: versions are 1-{MAX_VERSION}"
            )
        path = self.directory / str(version)
        if not path.is_dir():
            raise VersionNotFound(f"model {self.name!r} has no version {version}")
        return path

    def read_metadata(self, version: int) -> ModelMetadata:
        path = self.version_dir(version) / METADATA_FILE
        try:
            return ModelMetadata.model_validate_json(read_small_file(path, MAX_METADATA_BYTES))
        except (OSError, ValidationError, ValueError) as exc:
            raise StoreError(
                f"version {version} of {self.name!r}: unreadable {METADATA_FILE} ({describe(exc)})"
            ) from exc

    def read_figure(self, version: int, name: str) -> bytes:
        """One of a version's FIGURE_FILES; VersionNotFound when the version or the figure is not there."""
        if name not in FIGURE_FILES:
            raise VersionNotFound(f"versions carry no figure {name!r}; figures: {', '.join(FIGURE_FILES)}")
        path = self.version_dir(version) / name
        try:
            data = read_small_file(path, MAX_FIGURE_BYTES)
        except FileNotFoundError:
            raise VersionNotFound(f"version {version} of {self.name!r} has no {name}") from None
        except OSError as exc:
            if exc.errno is None or exc.errno == errno.ELOOP:  # not a regular file, too large, a symlink
                raise VersionNotFound(f"version {version} of {self.name!r}: {name} {describe(exc)}") from None
            raise StoreError(
                f"version {version} of {self.name!r}: unreadable {name} ({describe(exc)})"
            ) from exc
        if not data.startswith(PNG_SIGNATURE):  # whatever the file holds, only a PNG is served as one
            raise VersionNotFound(f"version {version} of {self.name!r}: {name} is not a PNG")
        return data

    def current(self) -> CurrentPointer | None:
        path = self.directory / CURRENT_FILE
        try:
            return CurrentPointer.model_validate_json(read_small_file(path, MAX_POINTER_BYTES))
        except FileNotFoundError:
            return None
        except (OSError, ValidationError, ValueError) as exc:
            raise StoreError(f"model {self.name!r}: unreadable {CURRENT_FILE} ({describe(exc)})") from exc

    def current_version(self) -> int | None:
        pointer = self.current()
        return pointer.version if pointer else None

    def version_summaries(self) -> list[VersionSummary]:
        """Every version with its headline metrics, or why its metadata cannot be read (the listings)."""
        promoted = self.current_version()
        summaries = []
        for version in self.versions():
            try:
                meta = self.read_metadata(version)
            except StoreError as exc:
                summaries.append(
                    VersionSummary(version=version, promoted=version == promoted, error=str(exc))
                )
                continue
            summaries.append(
                VersionSummary(
                    version=version,
                    promoted=version == promoted,
                    created_at=meta.created_at,
                    validation_accuracy=meta.validation.accuracy if meta.validation else None,
                    test_accuracy=meta.test.accuracy if meta.test else None,
                    artifacts=meta.artifacts,
                )
            )
        return summaries

    # ---- writing ----

    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        """A private directory beside the versions to write a new version into; removed on failure.

        Its writer holds a lock on a file inside it while it lives, so the staging directories a
        killed job left behind are told from live ones and removed when the next one starts."""
        with self._locked():
            self._remove_abandoned()
            path = self.directory / f"{STAGING_PREFIX}{uuid.uuid4().hex}"
            path.mkdir()
            writer = open(path / STAGING_LOCK, "w")  # noqa: SIM115 - held until the context ends
            fcntl.flock(writer, fcntl.LOCK_EX)
        try:
            yield path
        finally:
            writer.close()
            shutil.rmtree(path, ignore_errors=True)

    def _remove_abandoned(self) -> None:
        """Under the store lock: staging directories whose writer is gone, and pointer files a killed
        promotion left half-written (both are only ever created under this lock)."""
        for path in self.directory.iterdir():
            if path.name.startswith(f".{CURRENT_FILE}."):
                path.unlink(missing_ok=True)
            elif (
                path.name.startswith(STAGING_PREFIX)
                and not path.is_symlink()
                and path.is_dir()
                and not held(path / STAGING_LOCK)
            ):
                shutil.rmtree(path, ignore_errors=True)

    def publish(self, staging: Path, metadata: ModelMetadata) -> int:
        """Give the staged files the next version number, atomically; returns that number."""
        if staging.parent != self.directory or not staging.name.startswith(STAGING_PREFIX):
            raise StoreError(f"{staging} is not a staging directory of {self.directory}")
        with self._locked():
            version = max(self.versions(), default=0) + 1
            if version > MAX_VERSION:
                raise StoreError(f"model {self.name!r} has reached the last version number, {MAX_VERSION}")
            stamped = metadata.model_copy(update={"version": version, "name": self.name})
            (staging / METADATA_FILE).write_text(stamped.model_dump_json(indent=2) + "\n")
            (staging / STAGING_LOCK).unlink(missing_ok=True)  # the writer keeps its lock until it is done
            for path in staging.iterdir():
                fsync_file(path)
            fsync_dir(staging)
            # A rename onto an existing non-empty directory fails, so a version is never overwritten.
            os.rename(staging, self.directory / str(version))
            fsync_dir(self.directory)
        return version

    def promote(self, version: int, reason: str = "manual") -> None:
        """Make an existing, readable version the current one (promotion or rollback)."""
        with self._locked():
            self.read_metadata(version)
            self._write_current(version, reason)

    def promote_if_better(self, version: int) -> bool:
        """Promote when the version's validation accuracy is >= the current one's (or nothing is current)."""
        with self._locked():
            candidate = self.read_metadata(version)
            current = self.current_version()
            if current is not None and current != version:
                incumbent = self.read_metadata(current)
                if _validation_accuracy(candidate) < _validation_accuracy(incumbent):
                    return False
            self._write_current(version, "validation accuracy >= current")
            return True

    def _write_current(self, version: int, reason: str) -> None:
        pointer = CurrentPointer(version=version, promoted_at=datetime.now(UTC), reason=reason)
        tmp = self.directory / f".{CURRENT_FILE}.{uuid.uuid4().hex}"
        tmp.write_text(pointer.model_dump_json() + "\n")
        fsync_file(tmp)
        os.replace(tmp, self.directory / CURRENT_FILE)
        fsync_dir(self.directory)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / LOCK_FILE, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def is_version_name(name: str) -> bool:
    """A version folder's name: 1-9 ASCII digits without a leading zero."""
    return 0 < len(name) <= len(str(MAX_VERSION)) and name.isascii() and name.isdigit() and name[0] != "0"


def _validation_accuracy(metadata: ModelMetadata) -> float:
    return metadata.validation.accuracy if metadata.validation else float("-inf")
