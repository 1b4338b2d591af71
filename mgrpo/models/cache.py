"""Built-model cache entries: complete-or-absent directories, safe under concurrent builders.

An entry `<root>/<name>/` is an ordinary Hugging Face checkpoint directory plus a marker file (a
JSON report whose `files` maps every other file to its SHA-256), written last. An entry is used
only when the marker is readable and every checksum matches; anything else is rebuilt. Builds
run under a file lock, into a temporary directory renamed into place (atomic on one file
system), so concurrent callers (SLURM array jobs) get one valid entry. Both test models
(`mgrpo.models.tiny`, `mgrpo.models.bpe`) are cached this way.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from filelock import FileLock

log = logging.getLogger(__name__)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def settings_key(settings: dict[str, Any]) -> str:
    """16 hex digits of the SHA-256 of the settings as sorted JSON."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def is_complete(entry: Path, marker: str) -> bool:
    """Whether an entry has a readable marker and every file it lists is intact."""
    try:
        report = json.loads((entry / marker).read_text())
        files = report["files"]
        return bool(files) and all(sha256_file(entry / name) == digest for name, digest in files.items())
    except (OSError, ValueError, KeyError, TypeError):
        return False


def write_marker(entry: Path, marker: str, report: dict[str, Any]) -> None:
    """Checksum every file of `entry` into `report['files']` and write the marker (last)."""
    report = {**report, "files": {p.name: sha256_file(p) for p in sorted(entry.iterdir()) if p.is_file()}}
    (entry / marker).write_text(json.dumps(report, indent=2))


def ensure_entry(root: Path, name: str, marker: str, build: Callable[[Path], None]) -> Path:
    """`<root>/<name>`, built by `build(empty_dir)` (which must end with `write_marker`) unless a
    complete entry exists. A complete entry is returned without locking; otherwise the caller
    takes `<root>/.<name>.lock`, checks again, removes incomplete leftovers, builds into a
    temporary directory and renames it into place."""
    entry = root / name
    if is_complete(entry, marker):
        return entry
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f".{name}.lock")):
        if is_complete(entry, marker):
            return entry
        for stale in [entry, *root.glob(f".{name}.tmp-*")]:
            if stale.exists():
                log.warning("removing incomplete model cache entry %s", stale)
                shutil.rmtree(stale)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=root))
        try:
            build(tmp)
            if not is_complete(tmp, marker):
                raise RuntimeError(f"the build of {name} wrote no valid {marker}")
            os.replace(tmp, entry)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return entry


def cpu_description() -> str:
    """The CPU model and its widest vector extension: what decides the build's float order."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:  # no /proc (not Linux): the platform's name alone
        pass
    vector = next((v for v in ("avx512f", "avx2", "avx", "neon", "asimd") if v in flags), "unknown vector unit")
    return f"{model} ({vector})"
