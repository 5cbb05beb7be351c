"""What the first complete download of each archive looked like, kept beside the data.

No checksum is published for the NLM archives, so tbclf records the size and SHA-256 of the
first complete download in ``<root>/.tbclf-download-manifest.json`` and holds every later
download, and every archive already on disk, to it: a corrupt transfer, a mirror that starts
serving another file or an archive changed on disk is then an error instead of new data.
"""

from __future__ import annotations

import datetime
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tbclf.errors import DataError
from tbclf.io import atomic_write_json, file_sha256

MANIFEST_NAME = ".tbclf-download-manifest.json"
FORMAT = 1
_MAX_BYTES = 1 << 20  # a manifest lists a few archives; anything bigger is not ours
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Recorded:
    """Size and SHA-256 of one archive's first complete download."""

    size: int
    sha256: str
    url: str
    recorded: str

    def origin(self, manifest: Path) -> str:
        return f"recorded in {manifest} from {self.url} on {self.recorded}"


class DownloadManifest:
    """The manifest of one data root (read when made, written atomically on each record)."""

    def __init__(self, root: Path) -> None:
        self.path = Path(root) / MANIFEST_NAME
        self.entries: dict[str, Recorded] = self._read()

    def _bad(self, why: str) -> DataError:
        return DataError(
            f"Download manifest {self.path} is unreadable ({why}). It records the size and "
            "SHA-256 of the first complete download of each archive; delete it to record them "
            "afresh on the next download."
        )

    def _read(self) -> dict[str, Recorded]:
        if not self.path.exists():
            return {}
        try:
            if self.path.stat().st_size > _MAX_BYTES:
                raise self._bad(f"larger than {_MAX_BYTES} bytes")
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise self._bad(str(exc)) from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise self._bad(f"not a format-{FORMAT} tbclf manifest")
        archives = data.get("archives")
        if not isinstance(archives, dict):
            raise self._bad("no 'archives' object")
        entries = {}
        for name, entry in archives.items():
            if not (
                isinstance(entry, dict)
                and isinstance(entry.get("size"), int)
                and entry["size"] >= 0
                and isinstance(entry.get("sha256"), str)
                and _SHA256.match(entry["sha256"])
            ):
                raise self._bad(f"entry {name!r} needs an integer size and a 64-digit sha256")
            entries[name] = Recorded(
                entry["size"], entry["sha256"], str(entry.get("url", "")),
                str(entry.get("recorded", "")),
            )  # fmt: skip
        return entries

    def get(self, filename: str) -> Recorded | None:
        return self.entries.get(filename)

    def record(self, filename: str, archive: Path, url: str) -> Recorded:
        """Add ``archive`` (a complete download) under ``filename`` and write the manifest."""
        now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
        entry = Recorded(archive.stat().st_size, file_sha256(archive), url, now.isoformat())
        self.entries[filename] = entry
        atomic_write_json(self.path, self._as_json())
        return entry

    def _as_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "note": "size and SHA-256 of the first complete download of each archive; "
            "tbclf checks later downloads against them (delete an entry to accept a new file)",
            "archives": {
                name: {"size": e.size, "sha256": e.sha256, "url": e.url, "recorded": e.recorded}
                for name, e in sorted(self.entries.items())
            },
        }
