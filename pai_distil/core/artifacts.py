"""Artifacts: directories described by `manifest.json` (every file, its size and sha256).

The manifest is written last and atomically, so its presence marks an artifact complete; a
job killed half-way leaves files but no manifest, and nothing treats them as a result.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from pai_distil.core.errors import UserError

MANIFEST = "manifest.json"
REWARD_HEAD = "reward_head.safetensors"  # marks a reward model checkpoint (beside the language model's files)


def sha256_file(path: Path, chunk: int = 1 << 20, progress=None) -> str:
    """The file's sha256; `progress(n)` (optional) gets the size of each block read."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
            if progress is not None:
                progress(len(block))
    return h.hexdigest()


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST and not p.name.startswith(".tmp"))


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _readable(paths: list[Path]) -> None:
    """Give files written through a private temp file (safetensors does: mode 0600) the mode a
    plain write would have, so a serving container running as another user can read them."""
    mode = 0o666 & ~_umask()
    for p in paths:
        if p.stat().st_mode & 0o777 == 0o600 and mode != 0o600:
            p.chmod(mode)


def write_manifest(root: str | Path, **meta) -> dict:
    root = Path(root)
    _readable(_files(root))
    files = [{"path": p.relative_to(root).as_posix(), "size": p.stat().st_size, "sha256": sha256_file(p)}
             for p in _files(root)]
    manifest = {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **meta, "files": files}
    tmp = root / f".tmp-{MANIFEST}"
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, root / MANIFEST)
    return manifest


def read_manifest(root: str | Path) -> dict | None:
    """The manifest of an artifact, None when it has none; a UserError when it is not a manifest."""
    p = Path(root) / MANIFEST
    if not p.is_file():
        return None
    try:
        manifest = json.loads(p.read_bytes())
        files = manifest["files"]
        if not all(isinstance(f["path"], str) and isinstance(f["size"], int) and isinstance(f["sha256"], str)
                   for f in files):
            raise TypeError("a file entry lacks path, size or sha256")
    except (ValueError, TypeError, KeyError) as e:  # ValueError: bad JSON or bytes; the rest: wrong shape
        why = f"missing {e}" if isinstance(e, KeyError) else str(e).splitlines()[0][:120]
        raise UserError(f"{p} is not a valid manifest ({why}); rerun the stage that writes {root}") from None
    return manifest


def artifact_name(root: str | Path) -> str:
    """The name an artifact is known by: the id of the run that wrote it (its manifest's `run_id`, as
    deploying it by run id names it), else its folder's name. A run's output folder is always named
    `output`, which names nothing."""
    root = Path(root).resolve()
    try:
        run_id = json.loads((root / MANIFEST).read_bytes()).get("run_id")
    except (OSError, ValueError, AttributeError):  # no manifest, or not ours: the folder names it
        run_id = None
    if isinstance(run_id, str) and run_id:
        return run_id
    return root.parent.name if root.name == "output" and root.parent.name else root.name


def is_complete(root: str | Path) -> bool:
    return (Path(root) / MANIFEST).is_file()


def verify(root: str | Path, checked: Checked | None = None) -> None:
    """Raise UserError unless every file of the manifest is present with its size and checksum.

    With `checked`, a file unchanged since its checksum last matched (same size, mtime, ctime and
    inode) is not read again, so verifying an 8B checkpoint before every submit costs a few stats.
    """
    root = Path(root)
    manifest = read_manifest(root)
    if manifest is None:
        raise UserError(f"{root} is not a complete artifact (no {MANIFEST}); rerun the stage that makes it")
    for f in manifest["files"]:
        p = root / f["path"]
        try:
            st = p.stat()
        except OSError:
            st = None
        if st is not None and st.st_size == f["size"] and checked is not None and checked.matches(p, st, f["sha256"]):
            continue
        if st is None or not p.is_file() or st.st_size != f["size"] or sha256_file(p) != f["sha256"]:
            raise UserError(f"artifact {root}: file {f['path']} is missing or changed since its manifest was "
                            "written; rerun the stage that writes it, or pass the changed file itself as the input")
        if checked is not None:
            checked.add(p, st, f["sha256"])
    if checked is not None:
        checked.save()


class Checked:
    """Files whose sha256 matched a manifest, keyed by path and stat, kept in one JSON file.

    Why a stat check may stand in for the checksum: a write changes ctime, which no tool can set
    back, and a replaced file has a new inode; a file with the same size, mtime, ctime and inode
    as when it was hashed has not been written since.
    """

    LIMIT = 50_000  # entries kept; older ones are forgotten (and hashed again when next used)

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.entries = json.loads(self.path.read_text())
        except (OSError, ValueError):  # missing or torn: start afresh, at the cost of hashing again
            self.entries = {}
        if not isinstance(self.entries, dict):
            self.entries = {}
        self.changed = False

    @staticmethod
    def _key(st: os.stat_result) -> list:
        return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]

    def matches(self, path: Path, st: os.stat_result, sha256: str) -> bool:
        return self.entries.get(str(path)) == [*self._key(st), sha256]

    def add(self, path: Path, st: os.stat_result, sha256: str) -> None:
        self.entries.pop(str(path), None)
        self.entries[str(path)] = [*self._key(st), sha256]
        self.changed = True

    def save(self) -> None:
        if not self.changed:
            return
        entries = dict(list(self.entries.items())[-self.LIMIT:])
        tmp = self.path.with_name(f".tmp-{os.getpid()}-{self.path.name}")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(entries))
            os.replace(tmp, self.path)
        except OSError:  # a cache: when it cannot be written, files are hashed again next time
            pass
        self.changed = False


def manifest_digest(manifest: dict) -> str:
    """The digest of an artifact from its manifest: the hash of its (path, sha256) list."""
    body = json.dumps([(f["path"], f["sha256"]) for f in manifest["files"]])
    return hashlib.sha256(body.encode()).hexdigest()


def hashed_files(path: str | Path) -> list[Path]:
    """The files `digest` reads whole: the file itself, or every file of a folder without a manifest
    (none for an artifact, whose manifest stands for its content)."""
    p = Path(path)
    if p.is_file():
        return [p]
    return [] if read_manifest(p) is not None else _files(p)


def digest(path: str | Path, progress=None) -> str:
    """Content digest of an input: a file's sha256, or the hash of an artifact's file list;
    `progress(n)` (optional) gets the size of each block hashed."""
    p = Path(path)
    if p.is_file():
        return sha256_file(p, progress=progress)
    manifest = read_manifest(p)
    if manifest is not None:
        return manifest_digest(manifest)
    body = json.dumps([(f.relative_to(p).as_posix(), sha256_file(f, progress=progress)) for f in _files(p)])
    return hashlib.sha256(body.encode()).hexdigest()
