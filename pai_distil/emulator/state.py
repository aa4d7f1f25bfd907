"""Emulator state that survives a restart: JSON documents in the data directory, written atomically."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path


class Store:
    """One collection (DLC jobs, DSW instances, ...): `<data-dir>/<name>/<id>.json`."""

    def __init__(self, root: Path):
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()

    def _path(self, key: str) -> Path:
        if not key or "/" in key or key.startswith("."):
            raise KeyError(key)
        return self.root / f"{key}.json"

    def get(self, key: str) -> dict | None:
        try:
            return json.loads(self._path(key).read_text())
        except (FileNotFoundError, KeyError):
            return None

    def put(self, key: str, doc: dict) -> dict:
        path = self._path(key)
        # not *.json: `all` globs for those (pathlib's glob matches dotfiles too), and a write in
        # progress would be listed as a second document
        tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
        with self.lock:
            tmp.write_text(json.dumps(doc, indent=1, sort_keys=True))
            os.replace(tmp, path)
        return doc

    def update(self, key: str, **changes) -> dict:
        with self.lock:
            doc = self.get(key) or {}
            doc.update(changes)
            return self.put(key, doc)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def all(self) -> list[dict]:
        docs = []
        for p in sorted(self.root.glob("*.json")):
            try:
                docs.append(json.loads(p.read_text()))
            except (OSError, json.JSONDecodeError):
                continue
        return docs
