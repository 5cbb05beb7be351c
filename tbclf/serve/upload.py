"""Read one uploaded image into memory, within a byte limit, never touching the disk.

Starlette's form parser spools file parts over 1 MiB to a temporary file; an X-ray upload is
often bigger, so the body is streamed here into python-multipart's parser with callbacks that
keep the file part in a bytearray, and counting stops the stream at the limit.
"""

from __future__ import annotations

from dataclasses import dataclass

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

# Multipart framing around the file (boundaries, part headers) on top of the file's own bytes.
ENVELOPE_BYTES = 64 * 1024
RAW_TYPES = ("image/", "application/octet-stream", "application/dicom")


class UploadError(Exception):
    """A request the API refuses; carries its HTTP status and a short error code."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail


@dataclass(frozen=True)
class Upload:
    name: str
    data: bytes


def too_large(limit: int) -> UploadError:
    return UploadError(
        413,
        "too_large",
        f"the upload is larger than {limit} bytes (the server's --max_upload_bytes); send a "
        "smaller image (8-bit PNG or JPEG of the X-ray is enough).",
    )


async def read_upload(request: Request, limit: int) -> Upload:
    """The image of a multipart form (field `file`) or a raw image body, at most `limit` bytes."""
    content_type = request.headers.get("content-type", "")
    mime, params = parse_options_header(content_type)
    mime = mime.decode("latin-1").lower()
    multipart = mime == "multipart/form-data"
    budget = limit + (ENVELOPE_BYTES if multipart else 0)
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > budget:
        raise too_large(limit)  # refused before reading a byte of the body
    if multipart:
        boundary = params.get(b"boundary")
        if not boundary:
            raise UploadError(400, "bad_request", "multipart/form-data without a boundary.")
        return await _read_multipart(request, boundary, limit, budget)
    if not mime.startswith(RAW_TYPES):
        raise UploadError(
            415,
            "unsupported_media_type",
            f"send the image as multipart/form-data (field 'file') or as a raw image body; got "
            f"Content-Type {content_type or 'none'!r}.",
        )
    body = bytearray()
    async for chunk in _stream(request):
        body += chunk
        if len(body) > limit:
            raise too_large(limit)
    return _non_empty(Upload(name="upload", data=bytes(body)))


async def _stream(request: Request):
    try:
        async for chunk in request.stream():
            yield chunk
    except ClientDisconnect:
        raise UploadError(400, "bad_request", "the client closed the connection.") from None


def _non_empty(upload: Upload) -> Upload:
    if not upload.data:
        raise UploadError(400, "empty_upload", "the upload is empty; choose an X-ray image file.")
    return upload


class _FilePart:
    """python-multipart callbacks that keep the first part carrying a filename (or named
    'file') in memory."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.field, self.value = bytearray(), bytearray()
        self.headers: dict[bytes, bytes] = {}
        self.current: bytearray | None = None
        self.found: Upload | None = None
        self.name = "upload"

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self.part_begin,
            "on_header_field": lambda d, s, e: self.field.extend(d[s:e]),
            "on_header_value": lambda d, s, e: self.value.extend(d[s:e]),
            "on_header_end": self.header_end,
            "on_headers_finished": self.headers_finished,
            "on_part_data": self.part_data,
            "on_part_end": self.part_end,
        }

    def part_begin(self) -> None:
        self.headers, self.current = {}, None

    def header_end(self) -> None:
        self.headers[bytes(self.field).lower()] = bytes(self.value)
        self.field, self.value = bytearray(), bytearray()

    def headers_finished(self) -> None:
        if self.found is not None:
            return
        _, params = parse_options_header(self.headers.get(b"content-disposition", b""))
        if params.get(b"name") == b"file" or b"filename" in params:
            self.current = bytearray()
            filename = params.get(b"filename", b"upload").decode("utf-8", "replace")
            self.name = filename.replace("/", "_").replace("\\", "_")[:200] or "upload"

    def part_data(self, data: bytes, start: int, end: int) -> None:
        if self.current is None:
            return
        self.current.extend(data[start:end])
        if len(self.current) > self.limit:
            raise too_large(self.limit)

    def part_end(self) -> None:
        if self.current is not None and self.found is None:
            self.found = Upload(name=self.name, data=bytes(self.current))
        self.current = None


async def _read_multipart(request: Request, boundary: bytes, limit: int, budget: int) -> Upload:
    part = _FilePart(limit)
    parser = MultipartParser(boundary, part.callbacks())
    received = 0
    try:
        async for chunk in _stream(request):
            received += len(chunk)
            if received > budget:
                raise too_large(limit)
            parser.write(chunk)
        parser.finalize()
    except UploadError:
        raise
    except Exception as error:  # noqa: BLE001 - python-multipart's parse errors
        raise UploadError(400, "bad_request", f"malformed multipart body: {error}") from None
    if part.found is None:
        raise UploadError(
            400, "empty_upload", "no file in the form; send the image in the field 'file'."
        )
    return _non_empty(part.found)
