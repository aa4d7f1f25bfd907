"""OSS transfers for `--backend pai`, with oss2 (the SDK with resumable multipart and CRC64 built in).

oss2 rather than the v2 SDK: its `resumable_upload` keeps a checkpoint record of finished parts
on disk and, when rerun, lists the parts OSS already has and sends only the rest; it checks the
CRC64 OSS returns for every part and object. On top of it:

- uploads skip a file whose object already carries the same sha256 (`x-oss-meta-sha256`);
- large files go as parallel multipart uploads, resumable after an interruption;
- downloads land in a temporary folder, are checked against the artifact's manifest, then move;
- archives are extracted only when no member escapes the target folder or writes through a link
  already there, and what they unpack to fits a size limit (no zip bombs).
"""

from __future__ import annotations

import os
import shutil
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from rich.console import Console
from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn,
                           TransferSpeedColumn)

from pai_distil.core import artifacts
from pai_distil import paths
from pai_distil.core.errors import UserError
from pai_distil.cloud.pai.config import PaiConfig

MULTIPART_THRESHOLD = 8 * 1024 * 1024
PART_SIZE = 4 * 1024 * 1024
THREADS = 4
SHA_META = "sha256"
MAX_EXTRACT_BYTES = 64 << 30  # what an archive may unpack to at most
MAX_RATIO = 100  # ... and at most this many times its own size: weights and text compress far less
MIN_EXTRACT_LIMIT = 16 << 20  # small archives may unpack to this whatever their ratio


@dataclass
class Transfer:
    """What an upload or download moved, for the line the CLI prints."""

    files_sent: int = 0
    bytes_sent: int = 0
    files_skipped: int = 0
    bytes_skipped: int = 0

    def summary(self, verb: str = "uploaded") -> str:
        return (f"{verb} {_size(self.bytes_sent)} in {self.files_sent} file(s); "
                f"{self.files_skipped} unchanged file(s), {_size(self.bytes_skipped)}, not sent")


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def explain(e: Exception, what: str) -> UserError:
    """One line for an OSS failure; authentication problems say which setting to fix."""
    import oss2

    if isinstance(e, oss2.exceptions.OssError):
        code = getattr(e, "code", "") or ""
        if code in ("SignatureDoesNotMatch", "InvalidAccessKeyId") or e.status == 403:
            return UserError(f"OSS refused the credentials ({code or e.status}) while {what}: check "
                             "ALIBABA_CLOUD_ACCESS_KEY_ID / ALIBABA_CLOUD_ACCESS_KEY_SECRET (or your profile)")
        if code == "NoSuchBucket":
            return UserError(f"OSS bucket does not exist ({what}); create it or fix `oss_bucket` with "
                             "`pai-distil config set oss_bucket=NAME`")
        if e.status == -2 or code == "":  # oss2 reports connection failures with status -2
            return UserError(f"cannot reach OSS while {what}: {getattr(e, 'message', e)}; check `oss_endpoint`")
        return UserError(f"OSS error {code} while {what}: {getattr(e, 'message', e)}")
    return UserError(f"OSS transfer failed while {what}: {e}")


class Storage:
    """One bucket of the configured account, through the credential chain."""

    def __init__(self, cfg: PaiConfig, console: Console | None = None):
        import oss2

        from pai_distil.cloud.pai.credentials import OssProvider, chain

        self.cfg = cfg
        self.console = console or Console(stderr=True)
        auth = oss2.ProviderAuthV4(OssProvider(chain()))
        self.bucket = oss2.Bucket(auth, cfg.oss_url(), cfg.oss_bucket, region=cfg.region,
                                  connect_timeout=10)
        self.resume_dir = paths.home() / "oss-resume"

    def uri(self, key: str) -> str:
        return f"oss://{self.cfg.oss_bucket}/{key}"

    def prefix_of(self, uri: str) -> str:
        """The key prefix of `oss://bucket[.endpoint]/prefix/` in this bucket; another bucket is refused."""
        bucket, prefix = split_uri(uri)
        if bucket != self.cfg.oss_bucket:
            raise UserError(f"{uri} is in bucket {bucket}, not the configured {self.cfg.oss_bucket}; copy it there "
                            "or `pai-distil config set oss_bucket=" + bucket + "`")
        return prefix

    def key(self, *parts: str) -> str:
        return str(PurePosixPath(self.cfg.oss_prefix, *parts))

    def ensure_bucket(self) -> None:
        import oss2

        try:
            self.bucket.get_bucket_info()
        except oss2.exceptions.NoSuchBucket:
            raise UserError(f"OSS bucket {self.cfg.oss_bucket!r} does not exist; create it (e.g. in the OSS "
                            "console) or set another with `pai-distil config set oss_bucket=NAME`") from None
        except oss2.exceptions.OssError as e:
            raise explain(e, f"opening bucket {self.cfg.oss_bucket}") from None

    # --- upload ---
    def _unchanged(self, key: str, size: int, sha: str) -> bool:
        import oss2

        try:
            head = self.bucket.head_object(key)
        except oss2.exceptions.NotFound:
            return False
        return head.content_length == size and head.headers.get(f"x-oss-meta-{SHA_META}") == sha

    def upload_file(self, path: Path, key: str, progress=None, sha: str | None = None) -> bool:
        """Put one file unless the object already has its checksum; True when bytes were sent."""
        import oss2

        sha = sha or artifacts.sha256_file(path)
        size = path.stat().st_size
        if self._unchanged(key, size, sha):
            return False
        self.resume_dir.mkdir(parents=True, exist_ok=True)
        oss2.resumable_upload(self.bucket, key, str(path), store=oss2.ResumableStore(root=str(self.resume_dir)),
                              headers={f"x-oss-meta-{SHA_META}": sha}, multipart_threshold=MULTIPART_THRESHOLD,
                              part_size=PART_SIZE, num_threads=THREADS, progress_callback=progress)
        return True

    def upload(self, local: Path, prefix: str, label: str = "upload") -> Transfer:
        """A file or a folder to `prefix/`, with a progress bar; unchanged files are skipped."""
        files = [local] if local.is_file() else sorted(p for p in local.rglob("*") if p.is_file() and not p.is_symlink())
        root = local.parent if local.is_file() else local
        total = sum(p.stat().st_size for p in files)
        stats = Transfer()
        try:
            with _bar(self.console) as bar:
                task = bar.add_task(label, total=total)
                for p in files:
                    key = f"{prefix.rstrip('/')}/{p.relative_to(root).as_posix()}"
                    done_before = bar.tasks[0].completed
                    size = p.stat().st_size

                    def moved(consumed: int, _total, base=done_before) -> None:
                        bar.update(task, completed=base + consumed)

                    sent = self.upload_file(p, key, progress=moved)
                    bar.update(task, completed=done_before + size)
                    if sent:
                        stats.files_sent += 1
                        stats.bytes_sent += size
                    else:
                        stats.files_skipped += 1
                        stats.bytes_skipped += size
        except Exception as e:
            if isinstance(e, UserError):
                raise
            raise explain(e, f"uploading {local}") from None
        return stats

    # --- artifacts in OSS ---
    def remote_manifest(self, prefix: str) -> dict | None:
        """The manifest of the artifact under `prefix/`, checked against what OSS lists there (every file
        present, with its size); None when it has no manifest yet. Reads manifest.json only."""
        import json

        import oss2

        prefix = prefix.rstrip("/") + "/"
        try:
            sizes = {o.key[len(prefix):]: o.size for o in oss2.ObjectIteratorV2(self.bucket, prefix=prefix)}
            if artifacts.MANIFEST not in sizes:
                return None
            manifest = json.loads(self.bucket.get_object(prefix + artifacts.MANIFEST).read())
        except oss2.exceptions.OssError as e:
            raise explain(e, f"reading the manifest of {self.uri(prefix)}") from None
        except ValueError:
            raise UserError(f"{self.uri(prefix + artifacts.MANIFEST)} is not JSON; rerun the stage that wrote it") from None
        for f in manifest.get("files", []):
            if sizes.get(f["path"]) != f["size"]:
                found = "no such object" if f["path"] not in sizes else f"{sizes[f['path']]} bytes"
                raise UserError(f"{self.uri(prefix + f['path'])}: the manifest says {f['size']} bytes, OSS has {found}; "
                                "rerun the stage that wrote it")
        return manifest

    # --- download ---
    def download(self, prefix: str, dest: Path, label: str = "download") -> Transfer:
        """Every object under `prefix/` into `dest`, verified against its manifest when it has one.

        Each file comes with `oss2.resumable_download` (ranged parts in parallel; an interrupted download
        resumes from the parts it has). Files arrive in a sibling temporary folder, kept between attempts,
        and replace `dest` only once all are verified.
        """
        import oss2

        prefix = prefix.rstrip("/") + "/"
        try:
            objects = [o for o in oss2.ObjectIteratorV2(self.bucket, prefix=prefix) if not o.key.endswith("/")]
        except oss2.exceptions.OssError as e:
            raise explain(e, f"listing {self.uri(prefix)}") from None
        tmp = dest.with_name(f".tmp-{dest.name}")
        tmp.mkdir(parents=True, exist_ok=True)
        self.resume_dir.mkdir(parents=True, exist_ok=True)
        store = oss2.ResumableDownloadStore(root=str(self.resume_dir))
        stats = Transfer()
        try:
            with _bar(self.console) as bar:
                task = bar.add_task(label, total=sum(o.size for o in objects))
                for o in objects:
                    target = safe_join(tmp, o.key[len(prefix):])
                    target.parent.mkdir(parents=True, exist_ok=True)
                    oss2.resumable_download(self.bucket, o.key, str(target), store=store,
                                            multiget_threshold=MULTIPART_THRESHOLD, part_size=PART_SIZE,
                                            num_threads=THREADS)  # CRC64 checked by oss2
                    stats.files_sent += 1
                    stats.bytes_sent += o.size
                    bar.advance(task, o.size)
        except oss2.exceptions.OssError as e:
            raise explain(e, f"downloading {self.uri(prefix)}") from None
        wanted = {safe_join(tmp, o.key[len(prefix):]) for o in objects}
        for stale in [f for f in tmp.rglob("*") if f.is_file() and f not in wanted]:  # from an older attempt
            stale.unlink()
        if artifacts.is_complete(tmp):
            artifacts.verify(tmp)
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
        return stats


def split_uri(uri: str) -> tuple[str, str]:
    """`oss://bucket[.endpoint]/prefix/` -> (bucket, `prefix/`)."""
    host, _, prefix = uri[len("oss://"):].partition("/")
    return host.split(".", 1)[0], prefix.rstrip("/") + "/" if prefix else ""


def _bar(console: Console) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                    TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console, transient=False)


def safe_join(root: Path, name: str) -> Path:
    """`root/name`, refusing names that would land outside `root` (absolute, `..`, drive letters)."""
    rel = PurePosixPath(name.replace("\\", "/"))
    if rel.is_absolute() or ".." in rel.parts or (rel.parts and ":" in rel.parts[0]):
        raise UserError(f"refusing {name!r}: it would be written outside {root}")
    return root.joinpath(*rel.parts)


def extract(archive: Path, dest: Path, max_bytes: int | None = None) -> list[Path]:
    """Unpack a .tar(.gz) or .zip into `dest`; refuses members that escape it or are links, paths through
    a link already in `dest`, and contents over `max_bytes` (default: MAX_RATIO times the archive's size,
    at least MIN_EXTRACT_LIMIT and at most MAX_EXTRACT_BYTES)."""
    dest.mkdir(parents=True, exist_ok=True)
    ratio_limit = max(archive.stat().st_size * MAX_RATIO, MIN_EXTRACT_LIMIT)
    limit = max_bytes if max_bytes is not None else min(MAX_EXTRACT_BYTES, ratio_limit)
    too_big = f"refusing {archive.name}: it unpacks to more than {limit} bytes (a zip bomb, or pass max_bytes)"
    written = []
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            if sum(i.file_size for i in z.infolist()) > limit:
                raise UserError(too_big)
            total = 0
            for info in z.infolist():
                target = _unlinked(dest, safe_join(dest, info.filename))
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with z.open(info) as src, open(target, "wb") as out:
                    while block := src.read(1 << 20):  # sizes in the directory can lie: count what comes out
                        total += len(block)
                        if total > limit:
                            raise UserError(too_big)
                        out.write(block)
                written.append(target)
        return written
    try:
        with tarfile.open(archive) as t:
            members = t.getmembers()
            for m in members:
                _unlinked(dest, safe_join(dest, m.name))
                if m.issym() or m.islnk():
                    raise UserError(f"refusing {m.name!r} in {archive.name}: archives with links are not extracted")
            if sum(m.size for m in members if m.isfile()) > limit:
                raise UserError(too_big)
            t.extractall(dest, filter="data")
            written = [dest / m.name for m in members if m.isfile()]
    except tarfile.TarError as e:  # FilterError included
        raise UserError(f"{archive} is not a readable archive ({e})") from None
    return written


def _unlinked(dest: Path, target: Path) -> Path:
    """`target`, unless it or a folder on the way to it below `dest` is a symbolic link (it would write elsewhere)."""
    path = dest
    for part in target.relative_to(dest).parts:
        path = path / part
        if path.is_symlink():
            raise UserError(f"refusing to extract through {path}: it is a symbolic link already in {dest}")
    return target
