"""Optional download of the public NLM Shenzhen and Montgomery TB chest X-ray archives.

Downloads resume (HTTP Range) because the Shenzhen archive is several GB, files are verified
and renamed into place atomically, and every failure ends with a message saying where to put
the files by hand, since many training machines have no internet access.

No checksum is published for these archives, so the first complete download's size and SHA-256
go into a manifest beside the data (:mod:`tbclf.data.download_manifest`) and every later
download, and any archive already on disk, must match it.
"""

from __future__ import annotations

import os
import shutil
import urllib.error
import urllib.request
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path, PurePosixPath

from tqdm.auto import tqdm

from tbclf.data.download_manifest import DownloadManifest
from tbclf.errors import ConfigError, DataError
from tbclf.io import file_sha256

DEFAULT_BASE_URLS: tuple[str, ...] = ("https://openi.nlm.nih.gov/imgs/collections/",)
LANDING_PAGE = "https://data.lhncbc.nlm.nih.gov/public/Tuberculosis-Chest-X-ray-Datasets/"
DOWNLOAD_DIR = ".downloads"
_CHUNK = 1 << 20
_USER_AGENT = "tbclf-downloader/0.1"


@dataclass(frozen=True)
class NlmArchive:
    """One public archive. approx_bytes is only for messages and the disk-space warning;
    expected_size / sha256 are checked when known (None: not checked, nothing made up)."""

    source: str
    filename: str
    folder: str
    prefix: str
    approx_bytes: int
    expected_size: int | None = None
    sha256: str | None = None

    @property
    def image_dir(self) -> str:
        return f"{self.folder}/CXR_png"


NLM_ARCHIVES: dict[str, NlmArchive] = {
    "shenzhen": NlmArchive(
        "shenzhen", "ChinaSet_AllFiles.zip", "ChinaSet_AllFiles", "CHNCXR", 3_770_000_000
    ),
    "montgomery": NlmArchive(
        "montgomery", "NLM-MontgomeryCXRSet.zip", "MontgomerySet", "MCUCXR", 617_000_000
    ),
}


class DownloadError(DataError):
    """A download that failed; ensure_nlm_data adds where to put the files by hand."""


def _verify(
    path: Path,
    expected_size: int | None,
    sha256: str | None,
    what: str,
    origin: str | None = None,
    remedy: str = "the file was removed",
) -> None:
    """Raise DownloadError naming ``what``, both sizes and both SHA-256s when path differs."""
    size = path.stat().st_size
    size_bad = expected_size is not None and size != expected_size
    digest = file_sha256(path) if sha256 is not None else None
    sha_bad = digest is not None and digest != sha256.lower()
    if not (size_bad or sha_bad):
        return
    facts = [f"{size} bytes (expected {expected_size})" if size_bad else f"{size} bytes"]
    if digest is not None:
        facts.append(f"sha256 {digest} (expected {sha256.lower()})")
    where = f"; the expected values were {origin}" if origin else ""
    raise DownloadError(
        f"{what} has {', '.join(facts)}{where}; {remedy}. A short file is a broken transfer; "
        "a complete one with another checksum means the mirror now serves a different file."
    )


def _open(url: str, offset: int, timeout: float):
    headers = {"User-Agent": _USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


def _resume_start(response, offset: int) -> int:
    """Where the response body starts: offset for a matching 206, 0 when Range was ignored."""
    if offset and getattr(response, "status", 200) == 206:
        content_range = response.headers.get("Content-Range", "")
        try:
            start = int(content_range.split()[1].split("-")[0])
        except (IndexError, ValueError):
            start = -1
        if start == offset:
            return offset
        raise DownloadError(
            f"Server sent Content-Range {content_range!r} for a resume at {offset}."
        )
    return 0


def download_file(
    url: str,
    dest: Path,
    expected_size: int | None = None,
    sha256: str | None = None,
    progress: bool = True,
    timeout: float = 60.0,
    origin: str | None = None,
) -> Path:
    """Stream url to dest via dest.part, resuming a partial .part with an HTTP Range request.

    An existing dest that verifies is reused. A failed verification removes the .part, so no
    corrupt file is ever left under the final name. ``origin`` says where the expected size and
    checksum come from, for the error message.
    """
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    if dest.exists():
        _verify(
            dest,
            expected_size,
            sha256,
            f"{dest} (already on disk)",
            origin,
            remedy="it was left as it is. Delete it and retry to download it again",
        )
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    offset = part.stat().st_size if part.exists() else 0
    if expected_size is not None and offset > expected_size:
        part.unlink()
        offset = 0
    if expected_size is None or offset < expected_size:
        _download(url, part, offset, progress, timeout)
    try:
        _verify(part, expected_size, sha256, f"Downloaded {url}", origin)
    except DownloadError:
        part.unlink(missing_ok=True)
        raise
    os.replace(part, dest)
    return dest


def _download(url: str, part: Path, offset: int, progress: bool, timeout: float) -> None:
    """_fetch with network errors turned into DownloadError (the .part stays for a resume)."""
    try:
        _fetch(url, part, offset, progress, timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # nothing left to send: the .part may be complete
            total = (exc.headers.get("Content-Range") or "").rpartition("/")[2]
            if total != str(offset):
                part.unlink(missing_ok=True)
                _download(url, part, 0, progress, timeout)
            return
        raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise DownloadError(f"{url}: {reason}") from None
    except (OSError, HTTPException) as exc:
        raise DownloadError(
            f"{url}: the transfer broke off ({exc!r}); run again to resume from {part}."
        ) from None


def _fetch(url: str, part: Path, offset: int, progress: bool, timeout: float) -> None:
    with _open(url, offset, timeout) as response:
        start = _resume_start(response, offset)
        length = response.headers.get("Content-Length")
        total = start + int(length) if length and length.isdigit() else None
        with (
            open(part, "ab" if start else "wb") as f,
            tqdm(
                total=total,
                initial=start,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=part.name.removesuffix(".part"),
                disable=not progress,
            ) as bar,
        ):
            received = start
            for block in iter(lambda: response.read(_CHUNK), b""):
                f.write(block)
                bar.update(len(block))
                received += len(block)
        if total is not None and received < total:
            raise HTTPException(f"got {received} of {total} bytes")


def _member_target(root: Path, name: str, zip_path: Path) -> Path | None:
    """Where a zip member goes under root; None for folders and macOS metadata."""
    rel = PurePosixPath(name.replace("\\", "/"))
    if rel.is_absolute() or ".." in rel.parts or (rel.parts and ":" in rel.parts[0]):
        raise DataError(
            f"Archive {zip_path} has a member {name!r} that would be written outside {root}; "
            "refusing to extract it. Download the archive again from the official source."
        )
    if not rel.parts or name.endswith("/") or rel.parts[0] == "__MACOSX":
        return None
    return root.joinpath(*rel.parts)


def extract_archive(zip_path: Path, root: Path) -> list[Path]:
    """Extract zip_path under root (each file atomically), refusing members that escape root."""
    zip_path, root = Path(zip_path), Path(root)
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(
            f"{zip_path} is not a readable zip archive ({exc}). Delete it and retry."
        ) from None
    written = []
    with archive:
        members = [(m, _member_target(root, m.filename, zip_path)) for m in archive.infolist()]
        for member, target in members:
            if target is None or member.is_dir():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.tmp")
            try:
                with archive.open(member) as src, open(tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst, _CHUNK)
            except (zipfile.BadZipFile, OSError) as exc:
                tmp.unlink(missing_ok=True)
                raise DataError(
                    f"{zip_path} is corrupt at {member.filename} ({exc}). Delete it "
                    "and download it again."
                ) from None
            os.replace(tmp, target)
            written.append(target)
    return written


def manual_instructions(root: Path, sources: Sequence[str]) -> str:
    """Where the images go when they are fetched by hand."""
    places = "; ".join(
        f"{NLM_ARCHIVES[s].source}: {Path(root) / NLM_ARCHIVES[s].image_dir}/ "
        f"({NLM_ARCHIVES[s].prefix}_####_0.png / _1.png)"
        for s in sources
    )
    return (
        f"Download the archives by hand (see {LANDING_PAGE}) and unzip them into {root}, so the "
        f"PNGs end up at {places}. Then run again with data.download=false."
    )


def _marker(root: Path, archive: NlmArchive) -> Path:
    return root / DOWNLOAD_DIR / f"{archive.source}.extracted"


def _has_images(folder: Path, prefix: str) -> bool:
    return folder.is_dir() and any(
        p.name.upper().startswith(prefix) and p.suffix.lower() == ".png" for p in folder.iterdir()
    )


def ensure_nlm_data(
    root: Path,
    sources: Sequence[str] = ("shenzhen", "montgomery"),
    base_urls: Sequence[str] | str | None = None,
    progress: bool = True,
    keep_archives: bool = False,
    timeout: float = 60.0,
) -> list[Path]:
    """Make sure the NLM sets are under root, downloading and extracting what is missing.

    Each source is fetched from the first base URL that works (archives are <base><filename>).
    Returns the image folders (<root>/ChinaSet_AllFiles/CXR_png, <root>/MontgomerySet/CXR_png).
    """
    unknown = [s for s in sources if s not in NLM_ARCHIVES]
    if unknown or not sources:
        raise ConfigError(f"Unknown NLM source(s) {unknown}; choose from {sorted(NLM_ARCHIVES)}.")
    if isinstance(base_urls, str):
        base_urls = [base_urls]
    bases = list(base_urls) if base_urls else list(DEFAULT_BASE_URLS)
    root = Path(root).expanduser().absolute()
    root.mkdir(parents=True, exist_ok=True)
    downloads = root / DOWNLOAD_DIR
    manifest: DownloadManifest | None = None  # read when a download is needed
    folders = []
    for name in sources:
        archive = NLM_ARCHIVES[name]
        image_dir = root / archive.image_dir
        folders.append(image_dir)
        zip_path = downloads / archive.filename
        partial = zip_path.with_name(zip_path.name + ".part")
        marker = _marker(root, archive)
        if _has_images(image_dir, archive.prefix):
            if marker.exists() or not (zip_path.exists() or partial.exists()):
                continue  # already extracted, or put there by hand
        else:
            marker.unlink(missing_ok=True)  # images were removed since: fetch them again
        free = shutil.disk_usage(root).free
        if free < 2 * archive.approx_bytes:
            warnings.warn(
                f"Only {free / 1e9:.1f} GB free under {root}; the {name} archive needs about "
                f"{2 * archive.approx_bytes / 1e9:.1f} GB (zip + extracted).",
                stacklevel=2,
            )
        expected_size, sha256, origin = archive.expected_size, archive.sha256, None
        manifest = manifest or DownloadManifest(root)
        known = manifest.get(archive.filename)
        if archive.sha256 is not None:
            origin = "published for this archive (pinned in tbclf)"
        elif known is not None:
            expected_size, sha256 = known.size, known.sha256
            origin = known.origin(manifest.path) + (
                f". If the new file is right, remove the {archive.filename!r} entry from "
                f"{manifest.path} and run again"
            )
        errors = []
        for base in bases:
            url = base.rstrip("/") + "/" + archive.filename
            try:
                download_file(url, zip_path, expected_size, sha256, progress, timeout, origin)
                break
            except DownloadError as exc:
                errors.append(str(exc))
        else:
            tried = "\n  ".join(errors)
            raise DataError(
                f"Could not download the {name} archive. Tried:\n  {tried}\n"
                + manual_instructions(root, sources)
            )
        if known is None and archive.sha256 is None:
            manifest.record(archive.filename, zip_path, url)
        extract_archive(zip_path, root)
        if not _has_images(image_dir, archive.prefix):
            raise DataError(
                f"{zip_path} did not contain {archive.prefix}_*.png images under "
                f"{archive.image_dir}/. " + manual_instructions(root, [name])
            )
        marker.write_text(archive.filename + "\n")
        if not keep_archives:
            zip_path.unlink()
    return folders
