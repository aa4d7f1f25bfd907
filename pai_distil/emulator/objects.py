"""The emulator's object store: what OSS keeps, with the checksums OSS reports (ETag, CRC64).

Metadata lives in SQLite (sorted prefix listing, safe across threads), object bodies in files
named by a random id, so a put that dies half-way never replaces the old object. The DLC
emulator uses the same store directly to materialise data sources and write outputs back.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from oss2.utils import Crc64

SCHEMA = """
CREATE TABLE IF NOT EXISTS buckets (name TEXT PRIMARY KEY, created REAL, region TEXT);
CREATE TABLE IF NOT EXISTS objects (bucket TEXT, key TEXT, size INTEGER, etag TEXT, crc64 TEXT,
    mtime REAL, content_type TEXT, meta TEXT, blob TEXT, kind TEXT, PRIMARY KEY (bucket, key));
CREATE TABLE IF NOT EXISTS uploads (upload_id TEXT PRIMARY KEY, bucket TEXT, key TEXT, initiated REAL,
    content_type TEXT, meta TEXT);
CREATE TABLE IF NOT EXISTS parts (upload_id TEXT, number INTEGER, size INTEGER, etag TEXT, crc64 TEXT,
    mtime REAL, blob TEXT, PRIMARY KEY (upload_id, number));
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER);
"""
CHUNK = 1 << 20


@dataclass
class ObjectInfo:
    bucket: str
    key: str
    size: int
    etag: str  # upper-case hex, without quotes, as OSS shows it
    crc64: str  # decimal, as the x-oss-hash-crc64ecma header carries it
    mtime: float
    content_type: str
    meta: dict[str, str]
    blob: str
    kind: str  # Normal or Multipart


class Written:
    """A body written to a blob file while its MD5 and CRC64 are computed."""

    def __init__(self, blob: Path):
        self.blob = blob
        self.md5 = hashlib.md5()
        self.crc = Crc64(0)
        self.size = 0
        self._f = open(blob, "wb")

    def write(self, data: bytes) -> None:
        self._f.write(data)
        self.md5.update(data)
        self.crc.update(data)
        self.size += len(data)

    def close(self) -> None:
        self._f.close()


class ObjectStore:
    def __init__(self, root: Path):
        self.root = root
        self.blobs = root / "blobs"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._db() as db:
            db.executescript(SCHEMA)

    def _db(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.root / "oss.sqlite", timeout=30, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.row_factory = sqlite3.Row
            self._local.conn = conn
        return conn

    # --- counters: what clients sent, for anyone who wants to check (tests count parts) ---
    def count(self, name: str, n: int = 1) -> None:
        self._db().execute("INSERT INTO counters VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = value + ?",
                           (name, n, n))

    def counters(self) -> dict[str, int]:
        return {r["name"]: r["value"] for r in self._db().execute("SELECT * FROM counters")}

    # --- buckets ---
    def create_bucket(self, name: str, region: str) -> bool:
        cur = self._db().execute("INSERT OR IGNORE INTO buckets VALUES (?, ?, ?)", (name, time.time(), region))
        return cur.rowcount == 1

    def bucket(self, name: str) -> sqlite3.Row | None:
        return self._db().execute("SELECT * FROM buckets WHERE name = ?", (name,)).fetchone()

    def buckets(self) -> list[sqlite3.Row]:
        return self._db().execute("SELECT * FROM buckets ORDER BY name").fetchall()

    def delete_bucket(self, name: str) -> str | None:
        """None when deleted, else why not."""
        if self._db().execute("SELECT 1 FROM objects WHERE bucket = ? LIMIT 1", (name,)).fetchone():
            return "BucketNotEmpty"
        self._db().execute("DELETE FROM buckets WHERE name = ?", (name,))
        return None

    # --- objects ---
    def new_blob(self) -> Written:
        return Written(self.blobs / uuid.uuid4().hex)

    def write_stream(self, chunks: Iterator[bytes]) -> Written:
        w = self.new_blob()
        try:
            for chunk in chunks:
                w.write(chunk)
        finally:
            w.close()
        return w

    def commit(self, bucket: str, key: str, w: Written, content_type: str, meta: dict[str, str],
               etag: str | None = None, kind: str = "Normal") -> ObjectInfo:
        return self._insert(ObjectInfo(bucket, key, w.size, etag or w.md5.hexdigest().upper(), str(w.crc.crc),
                                       time.time(), content_type, meta, w.blob.name, kind))

    def _insert(self, info: ObjectInfo) -> ObjectInfo:
        old = self.head(info.bucket, info.key)
        self._db().execute("INSERT OR REPLACE INTO objects VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                           (info.bucket, info.key, info.size, info.etag, info.crc64, info.mtime, info.content_type,
                            json.dumps(info.meta), info.blob, info.kind))
        if old is not None and old.blob != info.blob:
            (self.blobs / old.blob).unlink(missing_ok=True)
        return info

    def put_file(self, bucket: str, key: str, path: Path, meta: dict[str, str] | None = None) -> ObjectInfo:
        with open(path, "rb") as f:
            w = self.write_stream(iter(lambda: f.read(CHUNK), b""))
        return self.commit(bucket, key, w, "application/octet-stream", meta or {})

    def head(self, bucket: str, key: str) -> ObjectInfo | None:
        row = self._db().execute("SELECT * FROM objects WHERE bucket = ? AND key = ?", (bucket, key)).fetchone()
        return _info(row) if row else None

    def path(self, info: ObjectInfo) -> Path:
        return self.blobs / info.blob

    def copy(self, src: ObjectInfo, bucket: str, key: str, meta: dict[str, str] | None) -> ObjectInfo:
        blob = uuid.uuid4().hex
        shutil.copyfile(self.path(src), self.blobs / blob)
        return self._insert(ObjectInfo(bucket, key, src.size, src.etag, src.crc64, time.time(), src.content_type,
                                       src.meta if meta is None else meta, blob, src.kind))

    def delete(self, bucket: str, key: str) -> None:
        old = self.head(bucket, key)
        if old is not None:
            self._db().execute("DELETE FROM objects WHERE bucket = ? AND key = ?", (bucket, key))
            (self.blobs / old.blob).unlink(missing_ok=True)

    def list(self, bucket: str, prefix: str = "", after: str = "", limit: int = 1000) -> list[ObjectInfo]:
        """Objects whose key starts with `prefix` and sorts after `after`, in key order."""
        rows = self._db().execute(
            "SELECT * FROM objects WHERE bucket = ? AND key > ? AND substr(key, 1, ?) = ? ORDER BY key LIMIT ?",
            (bucket, after, len(prefix), prefix, limit)).fetchall()
        return [_info(r) for r in rows]

    # --- multipart ---
    def initiate(self, bucket: str, key: str, content_type: str, meta: dict[str, str]) -> str:
        upload_id = uuid.uuid4().hex.upper()
        self._db().execute("INSERT INTO uploads VALUES (?, ?, ?, ?, ?, ?)",
                           (upload_id, bucket, key, time.time(), content_type, json.dumps(meta)))
        return upload_id

    def upload(self, upload_id: str) -> sqlite3.Row | None:
        return self._db().execute("SELECT * FROM uploads WHERE upload_id = ?", (upload_id,)).fetchone()

    def put_part(self, upload_id: str, number: int, w: Written) -> sqlite3.Row:
        old = self._db().execute("SELECT blob FROM parts WHERE upload_id = ? AND number = ?",
                                 (upload_id, number)).fetchone()
        self._db().execute("INSERT OR REPLACE INTO parts VALUES (?, ?, ?, ?, ?, ?, ?)",
                           (upload_id, number, w.size, w.md5.hexdigest().upper(), str(w.crc.crc), time.time(),
                            w.blob.name))
        if old is not None:
            (self.blobs / old["blob"]).unlink(missing_ok=True)
        return self.parts(upload_id, number - 1, 1)[0]

    def parts(self, upload_id: str, after: int = 0, limit: int = 1000) -> list[sqlite3.Row]:
        return self._db().execute("SELECT * FROM parts WHERE upload_id = ? AND number > ? ORDER BY number LIMIT ?",
                                  (upload_id, after, limit)).fetchall()

    def complete(self, upload_id: str, numbers: list[int]) -> ObjectInfo:
        up = self.upload(upload_id)
        parts = {r["number"]: r for r in self.parts(upload_id, 0, 100000)}
        w = self.new_blob()
        md5s = hashlib.md5()
        try:
            for n in numbers:
                md5s.update(bytes.fromhex(parts[n]["etag"]))
                with open(self.blobs / parts[n]["blob"], "rb") as f:
                    while chunk := f.read(CHUNK):
                        w.write(chunk)
        finally:
            w.close()
        etag = f"{md5s.hexdigest().upper()}-{len(numbers)}"
        info = self.commit(up["bucket"], up["key"], w, up["content_type"], json.loads(up["meta"]), etag, "Multipart")
        self.abort(upload_id)
        return info

    def abort(self, upload_id: str) -> None:
        for r in self.parts(upload_id, 0, 100000):
            (self.blobs / r["blob"]).unlink(missing_ok=True)
        self._db().execute("DELETE FROM parts WHERE upload_id = ?", (upload_id,))
        self._db().execute("DELETE FROM uploads WHERE upload_id = ?", (upload_id,))

    # --- whole prefixes, for DLC data sources ---
    def download_prefix(self, bucket: str, prefix: str, dest: Path) -> int:
        """Copy every object under `prefix` into `dest` (keys become relative paths); returns the count."""
        n, after = 0, ""
        while batch := self.list(bucket, prefix, after):
            for info in batch:
                after = info.key
                rel = info.key[len(prefix):].lstrip("/")
                if not rel or rel.endswith("/") or ".." in Path(rel).parts:
                    continue
                target = dest / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(self.path(info), target)
                n += 1
        return n

    def upload_dir(self, src: Path, bucket: str, prefix: str) -> int:
        """Mirror `src` into `prefix`: put changed files, delete objects whose file is gone."""
        seen, n = set(), 0
        for p in sorted(src.rglob("*")):
            if not p.is_file() or p.is_symlink():
                continue
            key = prefix + p.relative_to(src).as_posix()
            try:
                old = self.head(bucket, key)
                if old is None or old.size != p.stat().st_size or old.etag != _md5(p):
                    self.put_file(bucket, key, p)
                    n += 1
            except FileNotFoundError:  # renamed or removed by the job while we looked
                continue
            seen.add(key)
        after = ""
        while batch := self.list(bucket, prefix, after):
            for info in batch:
                after = info.key
                if info.key not in seen:
                    self.delete(bucket, info.key)
        return n


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest().upper()


def _info(row: sqlite3.Row) -> ObjectInfo:
    return ObjectInfo(row["bucket"], row["key"], row["size"], row["etag"], row["crc64"], row["mtime"],
                      row["content_type"], json.loads(row["meta"]), row["blob"], row["kind"])


def store_of(emulator) -> ObjectStore:
    """The emulator's one object store (created on first use)."""
    store = emulator.services.get("objects")
    if store is None:
        store = emulator.services["objects"] = ObjectStore(emulator.data_dir / "oss")
    return store

