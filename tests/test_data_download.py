"""NLM archive download against a local HTTP server: resume, verification, extraction, errors."""

from __future__ import annotations

import hashlib
import http.server
import io
import socket
import threading
import zipfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from imaging import make_png

from tbclf.data.download import (
    NLM_ARCHIVES,
    download_file,
    ensure_nlm_data,
    extract_archive,
)
from tbclf.data.download_manifest import MANIFEST_NAME, DownloadManifest
from tbclf.data.layouts import discover
from tbclf.errors import ConfigError, DataError


class FileServer:
    """Serves in-memory files on 127.0.0.1 with optional Range support, and records requests."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.honour_range = True
        self.truncate_at: int | None = None  # send only this many body bytes, then hang up
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 (http.server API)
                rng = self.headers.get("Range")
                server.requests.append((self.path, rng))
                data = server.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                if rng and server.honour_range:
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.truncate_at is not None:
                    body = body[: server.truncate_at]
                    server.truncate_at = None
                    self.wfile.write(body)
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[FileServer]:
    s = FileServer()
    yield s
    s.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def nlm_zip(tmp_path: Path, source: str, n_per_class: int = 2) -> bytes:
    """A miniature of the real archive: <folder>/CXR_png/<prefix>_####_{0,1}.png plus extras."""
    archive = NLM_ARCHIVES[source]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(f"{archive.folder}/", "")
        k = 1
        for label in (0, 1):
            for _ in range(n_per_class):
                name = f"{archive.prefix}_{k:04d}_{label}.png"
                img = tmp_path / "src" / source / name
                make_png(img, (32, 32), seed=k + (100 if source == "montgomery" else 0))
                zf.write(img, f"{archive.image_dir}/{name}")
                zf.writestr(f"{archive.folder}/ClinicalReadings/{name[:-4]}.txt", "normal\n")
                if source == "montgomery":
                    zf.write(img, f"{archive.folder}/ManualMask/leftMask/{name}")
                k += 1
        zf.writestr(f"__MACOSX/{archive.folder}/._junk", "x")
    return buf.getvalue()


def payload(n: int = 300_000) -> bytes:
    return bytes(range(256)) * (n // 256) + b"tail"


# ------------------------------------------------------------------ download_file


def test_download_verifies_and_renames_into_place(tmp_path: Path, server: FileServer) -> None:
    data = payload()
    server.files["/f.bin"] = data
    dest = tmp_path / "dl" / "f.bin"
    out = download_file(
        f"{server.url}/f.bin",
        dest,
        expected_size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        progress=False,
    )
    assert out == dest and dest.read_bytes() == data
    assert not dest.with_name("f.bin.part").exists()
    # An existing, verified file is reused without a request.
    n = len(server.requests)
    download_file(f"{server.url}/f.bin", dest, expected_size=len(data), progress=False)
    assert len(server.requests) == n


def test_resume_from_partial_file_with_range(tmp_path: Path, server: FileServer) -> None:
    data = payload()
    server.files["/f.bin"] = data
    dest = tmp_path / "f.bin"
    dest.with_name("f.bin.part").write_bytes(data[:123_457])
    download_file(f"{server.url}/f.bin", dest, expected_size=len(data), progress=False)
    assert server.requests == [("/f.bin", "bytes=123457-")]
    assert dest.read_bytes() == data


def test_server_ignoring_range_gives_a_fresh_download(tmp_path: Path, server: FileServer) -> None:
    data = payload()
    server.files["/f.bin"] = data
    server.honour_range = False
    dest = tmp_path / "f.bin"
    dest.with_name("f.bin.part").write_bytes(b"garbage that must not stay at the front")
    sha = hashlib.sha256(data).hexdigest()
    download_file(f"{server.url}/f.bin", dest, sha256=sha, progress=False)
    assert dest.read_bytes() == data


def test_complete_part_file_is_finished_on_416(tmp_path: Path, server: FileServer) -> None:
    data = payload(1000)
    server.files["/f.bin"] = data
    dest = tmp_path / "f.bin"
    dest.with_name("f.bin.part").write_bytes(data)
    download_file(f"{server.url}/f.bin", dest, progress=False)  # size unknown: asks the server
    assert dest.read_bytes() == data


def test_broken_transfer_keeps_part_and_resumes(tmp_path: Path, server: FileServer) -> None:
    data = payload()
    server.files["/f.bin"] = data
    server.truncate_at = 100_000
    dest = tmp_path / "f.bin"
    with pytest.raises(DataError, match="run again to resume"):
        download_file(f"{server.url}/f.bin", dest, progress=False)
    assert not dest.exists()
    assert dest.with_name("f.bin.part").stat().st_size == 100_000
    download_file(f"{server.url}/f.bin", dest, expected_size=len(data), progress=False)
    assert server.requests[-1] == ("/f.bin", "bytes=100000-")
    assert dest.read_bytes() == data


def test_checksum_mismatch_leaves_no_file(tmp_path: Path, server: FileServer) -> None:
    server.files["/f.bin"] = payload()
    dest = tmp_path / "f.bin"
    with pytest.raises(DataError, match="sha256"):
        download_file(f"{server.url}/f.bin", dest, sha256="0" * 64, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_size_mismatch_leaves_no_file(tmp_path: Path, server: FileServer) -> None:
    server.files["/f.bin"] = payload(1000)
    dest = tmp_path / "f.bin"
    with pytest.raises(DataError, match="expected 999"):
        download_file(f"{server.url}/f.bin", dest, expected_size=999, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_http_404(tmp_path: Path, server: FileServer) -> None:
    with pytest.raises(DataError, match="HTTP 404"):
        download_file(f"{server.url}/missing.zip", tmp_path / "m.zip", progress=False)


def test_existing_dest_that_does_not_verify_is_not_overwritten(tmp_path: Path) -> None:
    dest = tmp_path / "f.bin"
    dest.write_bytes(b"user data")
    with pytest.raises(DataError, match="Delete it and retry"):
        download_file("http://127.0.0.1:9/f.bin", dest, expected_size=5, progress=False)
    assert dest.read_bytes() == b"user data"


# ------------------------------------------------------------------ extraction


def test_extract_refuses_members_that_escape(tmp_path: Path) -> None:
    for bad in ("../evil.png", "/abs/evil.png", "a/../../evil.png"):
        zip_path = tmp_path / "bad.zip"
        with zipfile.ZipFile(zip_path, "w") as zf:
            zf.writestr("ok/fine.png", "x")
            zf.writestr(bad, "x")
        root = tmp_path / "root"
        with pytest.raises(DataError, match="outside"):
            extract_archive(zip_path, root)
        assert not (tmp_path / "evil.png").exists()
        assert not root.exists()  # checked before anything is written


def test_extract_corrupt_zip(tmp_path: Path) -> None:
    (tmp_path / "x.zip").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a readable zip"):
        extract_archive(tmp_path / "x.zip", tmp_path / "root")


# ------------------------------------------------------------------ ensure_nlm_data


def test_full_download_extract_and_discover(tmp_path: Path, server: FileServer) -> None:
    for source, archive in NLM_ARCHIVES.items():
        server.files[f"/mirror/{archive.filename}"] = nlm_zip(tmp_path, source)
    root = tmp_path / "data"
    folders = ensure_nlm_data(root, base_urls=[f"{server.url}/mirror/"], progress=False)
    assert folders == [
        root.absolute() / "ChinaSet_AllFiles/CXR_png",
        root.absolute() / "MontgomerySet/CXR_png",
    ]
    records = discover(root)
    counts = Counter((r.source, r.label) for r in records)
    assert counts == {
        ("shenzhen", 0): 2,
        ("shenzhen", 1): 2,
        ("montgomery", 0): 2,
        ("montgomery", 1): 2,
    }  # fmt: skip  (masks are not scans)
    assert not (root / "__MACOSX").exists()
    assert not list((root / ".downloads").glob("*.zip"))  # archives removed after extraction
    # A second call finds the data in place and downloads nothing.
    n = len(server.requests)
    ensure_nlm_data(root, base_urls=[f"{server.url}/mirror/"], progress=False)
    assert len(server.requests) == n
    # Scans deleted since: that archive is fetched again.
    for png in (root / "MontgomerySet/CXR_png").iterdir():
        png.unlink()
    ensure_nlm_data(root, base_urls=[f"{server.url}/mirror/"], progress=False)
    assert [p for p, _ in server.requests[n:]] == ["/mirror/NLM-MontgomeryCXRSet.zip"]
    assert len(discover(root)) == 8


def test_falls_back_to_the_next_mirror(tmp_path: Path, server: FileServer) -> None:
    server.files["/good/NLM-MontgomeryCXRSet.zip"] = nlm_zip(tmp_path, "montgomery")
    root = tmp_path / "data"
    ensure_nlm_data(
        root,
        sources=["montgomery"],
        base_urls=[f"http://127.0.0.1:{free_port()}/", f"{server.url}/good"],
        progress=False,
    )
    assert len(discover(root)) == 4


def test_images_put_there_by_hand_are_not_downloaded(tmp_path: Path) -> None:
    make_png(tmp_path / "MontgomerySet/CXR_png/MCUCXR_0001_0.png", (16, 16))
    ensure_nlm_data(tmp_path, sources=["montgomery"], base_urls=["http://127.0.0.1:9/"])


def test_server_down_says_where_to_put_the_files(tmp_path: Path) -> None:
    base = f"http://127.0.0.1:{free_port()}/nlm/"
    with pytest.raises(DataError) as err:
        ensure_nlm_data(tmp_path / "data", base_urls=[base], progress=False, timeout=5)
    msg = str(err.value)
    assert base + "ChinaSet_AllFiles.zip" in msg
    assert str(tmp_path / "data" / "ChinaSet_AllFiles" / "CXR_png") in msg
    assert str(tmp_path / "data" / "MontgomerySet" / "CXR_png") in msg
    assert "data.download=false" in msg


def test_archive_without_scans(tmp_path: Path, server: FileServer) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("something/else.txt", "x")
    server.files["/NLM-MontgomeryCXRSet.zip"] = buf.getvalue()
    with pytest.raises(DataError, match=r"did not contain MCUCXR_\*\.png"):
        ensure_nlm_data(tmp_path, sources=["montgomery"], base_urls=server.url, progress=False)


def test_unknown_source(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="Unknown NLM source"):
        ensure_nlm_data(tmp_path, sources=["kaggle"])


# ------------------------------------------------------------------ download manifest


def _manifest(root: Path) -> dict:
    import json

    return json.loads((root / MANIFEST_NAME).read_text())


def _fetch_montgomery(root: Path, server: FileServer, **options) -> None:
    ensure_nlm_data(root, sources=["montgomery"], base_urls=server.url, progress=False, **options)


def _serve_and_fetch_montgomery(
    tmp_path: Path, server: FileServer, **options
) -> tuple[Path, bytes]:
    """A fresh Montgomery zip served and fetched into tmp_path/data: (root, the zip's bytes)."""
    data = nlm_zip(tmp_path, "montgomery")
    server.files[f"/{NLM_ARCHIVES['montgomery'].filename}"] = data
    root = tmp_path / "data"
    _fetch_montgomery(root, server, **options)
    return root, data


def test_first_download_is_recorded_and_later_ones_must_match(
    tmp_path: Path, server: FileServer
) -> None:
    archive = NLM_ARCHIVES["montgomery"]
    root, first = _serve_and_fetch_montgomery(tmp_path, server)
    entry = _manifest(root)["archives"][archive.filename]
    assert entry["size"] == len(first)
    assert entry["sha256"] == hashlib.sha256(first).hexdigest()
    assert entry["url"] == f"{server.url}/{archive.filename}"

    # The scans are deleted and the mirror now serves another archive: refused, named.
    for png in (root / archive.image_dir).iterdir():
        png.unlink()
    other = nlm_zip(tmp_path / "other", "montgomery", n_per_class=3)
    server.files[f"/{archive.filename}"] = other
    with pytest.raises(DataError) as err:
        _fetch_montgomery(root, server)
    msg = str(err.value)
    assert archive.filename in msg and str(root.absolute() / MANIFEST_NAME) in msg
    assert hashlib.sha256(other).hexdigest() in msg and entry["sha256"] in msg
    assert "remove the 'NLM-MontgomeryCXRSet.zip' entry" in msg
    assert not list((root / ".downloads").glob("*.zip*"))  # nothing unverified is kept
    assert not list((root / archive.image_dir).iterdir())  # nor extracted
    assert _manifest(root)["archives"][archive.filename] == entry  # never overwritten

    # The same bytes again: verified against the record and extracted.
    server.files[f"/{archive.filename}"] = first
    _fetch_montgomery(root, server)
    assert len(discover(root)) == 4


def test_truncated_re_download_is_refused_against_the_record(
    tmp_path: Path, server: FileServer
) -> None:
    archive = NLM_ARCHIVES["montgomery"]
    data = nlm_zip(tmp_path, "montgomery")
    root = tmp_path / "data"
    (root).mkdir()
    manifest = DownloadManifest(root)
    (tmp_path / "first.zip").write_bytes(data)
    manifest.record(archive.filename, tmp_path / "first.zip", "http://mirror/first")
    # The server's copy is cut short but says so consistently (a bad mirror, not a hang-up).
    server.files[f"/{archive.filename}"] = data[:-100]
    with pytest.raises(DataError) as err:
        _fetch_montgomery(root, server)
    msg = str(err.value)
    assert f"{len(data) - 100} bytes (expected {len(data)})" in msg
    assert hashlib.sha256(data[:-100]).hexdigest() in msg and "http://mirror/first" in msg


def test_existing_archive_is_verified_against_the_record(
    tmp_path: Path, server: FileServer
) -> None:
    archive = NLM_ARCHIVES["montgomery"]
    root, data = _serve_and_fetch_montgomery(tmp_path, server, keep_archives=True)
    kept = root / ".downloads" / archive.filename
    assert kept.read_bytes() == data
    # The kept archive changes on disk (same size) and the scans are gone: refused, kept.
    for png in (root / archive.image_dir).iterdir():
        png.unlink()
    changed = bytearray(data)
    changed[len(data) // 2] ^= 0xFF
    kept.write_bytes(bytes(changed))
    n = len(server.requests)
    with pytest.raises(DataError) as err:
        _fetch_montgomery(root, server)
    msg = str(err.value)
    assert str(kept) in msg and "already on disk" in msg and "Delete it and retry" in msg
    assert hashlib.sha256(changed).hexdigest() in msg and hashlib.sha256(data).hexdigest() in msg
    assert kept.read_bytes() == bytes(changed), "a file on disk is never replaced silently"
    assert len(server.requests) == n


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        '{"format": 1}',
        '{"format": 1, "archives": {"a.zip": {"size": "12", "sha256": "00"}}}',
        '{"format": 99, "archives": {}}',
    ],
)
def test_bad_manifest_names_itself(tmp_path: Path, text: str) -> None:
    (tmp_path / MANIFEST_NAME).write_text(text)
    with pytest.raises(DataError, match=r"\.tbclf-download-manifest\.json.*delete it"):
        ensure_nlm_data(tmp_path, sources=["montgomery"], base_urls=["http://127.0.0.1:9/"])


# ------------------------------------------------------------------ one process downloads


def test_only_prepare_data_downloads_under_a_trainer(tmp_path: Path, monkeypatch) -> None:
    """Lightning runs prepare_data once per machine; setup() on every DDP rank never fetches."""
    from types import SimpleNamespace

    from imaging import fake_nlm_download

    from tbclf.data.datamodule import TBDataModule

    calls = fake_nlm_download(monkeypatch, n_per_class=10)
    root = tmp_path / "nlm"

    def datamodule() -> TBDataModule:
        dm = TBDataModule(root=root, download=True, image_size=32, num_workers=0,
                          cache_dir=tmp_path / "cache")  # fmt: skip
        dm.trainer = SimpleNamespace(logger=None, global_rank=1, lightning_module=None)
        return dm

    with pytest.raises(DataError, match="data.root"):
        datamodule().setup("fit")  # a rank whose prepare_data did not fetch: no download
    assert calls == []
    datamodule().prepare_data()
    assert calls == [root]
    datamodule().prepare_data()  # images there: nothing fetched again
    datamodule().setup("fit")
    assert calls == [root]
