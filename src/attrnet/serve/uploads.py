"""Reading images out of a multipart request without trusting it.

The body is parsed while it streams in (python-multipart's push parser), so an upload over the byte limit is
refused at the first chunk past the limit, never read whole; a declared Content-Length over the limit is
refused before any byte is read. Each image's header is checked before it is decoded: a decompression bomb
(a few kilobytes that declare a hundred million pixels) is refused from its header. Every refusal is an
UploadError carrying the HTTP status and a message that says what was wrong.
"""

from __future__ import annotations

import asyncio
import io
import warnings
from dataclasses import dataclass, field
from typing import AsyncIterator

from python_multipart.multipart import MultipartParser, parse_options_header

from attrnet.data.images import READ_FORMATS

FILE_FIELD = "file"
# Header checks before decoding. An image may declare up to FREE_PIXELS whatever its size on disk (decoding it
# costs at most 48 MB as RGB); beyond that it must not declare more than MAX_PIXELS_PER_BYTE pixels per byte of
# file. Photos carry 1-50 pixels per byte; even a flat JPEG stays under 100 (every 8x8 block costs a few bits),
# while a deflate bomb reaches about 1,000 (PNG, grey) to 8,000 (1-bit) pixels per byte.
FREE_PIXELS = 4096 * 4096
MAX_PIXELS_PER_BYTE = 250
MAX_UPLOAD_PIXELS = 100_000_000   # no image over 100 megapixels, however large its file


class UploadError(Exception):
    """A request the server refuses: status is the HTTP status (4xx), the message goes back as {"error": ...}."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class Upload:
    """One file of the request: its name as the client sent it and its bytes."""

    filename: str
    data: bytes


@dataclass
class _Part:
    name: str | None = None
    filename: str | None = None
    data: bytearray = field(default_factory=bytearray)
    header_field: bytes = b""
    header_value: bytes = b""
    disposition: bytes = b""


class _FormReader:
    """python-multipart callbacks that keep the parts named `file` and count what arrives."""

    def __init__(self, max_files: int):
        self.max_files = max_files
        self.files: list[Upload] = []
        self.other_fields: list[str] = []
        self.part = _Part()
        self.finished = False

    def callbacks(self) -> dict:
        return {"on_part_begin": self.on_part_begin, "on_part_data": self.on_part_data,
                "on_part_end": self.on_part_end, "on_header_field": self.on_header_field,
                "on_header_value": self.on_header_value, "on_header_end": self.on_header_end,
                "on_headers_finished": self.on_headers_finished, "on_end": self.on_end}

    def on_part_begin(self) -> None:
        self.part = _Part()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.part.header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.part.header_value += data[start:end]

    def on_header_end(self) -> None:
        if self.part.header_field.strip().lower() == b"content-disposition":
            self.part.disposition = self.part.header_value
        self.part.header_field = self.part.header_value = b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self.part.disposition)
        if b"name" not in options:
            raise UploadError(400, "a part of the multipart body has no Content-Disposition name")
        self.part.name = options[b"name"].decode("utf-8", "replace")
        if b"filename" in options:
            self.part.filename = options[b"filename"].decode("utf-8", "replace")
        if self.part.name == FILE_FIELD and len(self.files) >= self.max_files:
            raise UploadError(413, f"too many files in one request: at most {self.max_files} (the server's "
                                   f"--max-files); send the rest in another request")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.part.name == FILE_FIELD:  # other fields are counted, never kept
            self.part.data += data[start:end]

    def on_part_end(self) -> None:
        if self.part.name == FILE_FIELD:
            name = self.part.filename or f"image {len(self.files) + 1}"
            self.files.append(Upload(name, bytes(self.part.data)))
        else:
            self.other_fields.append(self.part.name or "")
        self.part = _Part()

    def on_end(self) -> None:
        self.finished = True


def _boundary(content_type: str | None) -> bytes:
    kind, options = parse_options_header(content_type or "")
    if kind != b"multipart/form-data":
        raise UploadError(415, f"send the images as multipart/form-data, one per field named {FILE_FIELD!r} "
                               f"(got Content-Type {content_type or 'none'!r})")
    boundary = options.get(b"boundary")
    if not boundary:
        raise UploadError(400, "the multipart/form-data Content-Type has no boundary")
    return boundary


def _declared_length(value: str | None, max_bytes: int) -> int | None:
    if value is None:
        return None
    try:
        length = int(value)
    except ValueError:
        raise UploadError(400, f"Content-Length {value!r} is not a number") from None
    if length > max_bytes:
        raise UploadError(413, f"the request is {length} bytes; the limit is {max_bytes} bytes "
                               f"({_mb(max_bytes)}, the server's --max-upload-mb)")
    return length


def _mb(n: int) -> str:
    return f"{n / 2**20:g} MB"


async def read_uploads(stream: AsyncIterator[bytes], content_type: str | None, content_length: str | None,
                       max_bytes: int, max_files: int, timeout_s: float) -> list[Upload]:
    """The files of a multipart body, read as it streams in; UploadError for anything the server refuses.

    stream: the request body's chunks (Starlette's request.stream()). The whole read must finish within
    timeout_s: a client that stops sending gets a 408 rather than holding its connection for ever."""
    declared = _declared_length(content_length, max_bytes)
    if declared == 0 or (declared is None and not content_type):  # docs/serving.md: no body is a 400
        raise UploadError(400, f"the request has no body; send one or more images as multipart/form-data in "
                               f"fields named {FILE_FIELD!r}")
    boundary = _boundary(content_type)
    form = _FormReader(max_files)
    parser = MultipartParser(boundary, form.callbacks())
    try:
        await asyncio.wait_for(_feed(stream, parser, max_bytes), timeout_s)
    except asyncio.TimeoutError:
        raise UploadError(408, f"the upload did not arrive within {timeout_s:g} s") from None
    except UploadError:
        raise
    except Exception as exc:  # python-multipart's parse errors (MultipartParseError and ValueError)
        why = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise UploadError(400, f"the multipart body is malformed ({why})") from None
    return _checked_files(form)


async def _feed(stream: AsyncIterator[bytes], parser: MultipartParser, max_bytes: int) -> int:
    received = 0
    async for chunk in stream:
        received += len(chunk)
        if received > max_bytes:  # refused while streaming: the rest of the body is never read
            raise UploadError(413, f"the request is over the limit of {max_bytes} bytes ({_mb(max_bytes)}, the "
                                   f"server's --max-upload-mb)")
        if chunk:
            parser.write(chunk)
    if received == 0:
        raise UploadError(400, f"the request has no body; send one or more images in fields named {FILE_FIELD!r}")
    parser.finalize()
    return received


def _checked_files(form: _FormReader) -> list[Upload]:
    if not form.finished:
        raise UploadError(400, "the multipart body ended before its closing boundary (a truncated upload?)")
    if not form.files:
        got = f" (got field(s) {', '.join(repr(f) for f in form.other_fields[:5])})" if form.other_fields else ""
        raise UploadError(400, f"no file in the request: send each image in a form field named {FILE_FIELD!r}{got}")
    for up in form.files:
        if not up.data:
            raise UploadError(400, f"{up.filename}: the file is empty (0 bytes)")
    return form.files


def check_image_header(data: bytes, name: str) -> None:
    """Refuse, from the header alone, an image too large to decode for its file size (a decompression bomb).
    Files PIL cannot identify pass: the decoder then says what they are not."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                width, height = im.size
    except Image.DecompressionBombError:  # PIL's own limit, above ours
        raise UploadError(413, f"{name}: the image declares more pixels than PIL will decode; the server decodes "
                               f"at most {MAX_UPLOAD_PIXELS:,} pixels per image") from None
    except Image.UnidentifiedImageError:
        raise UploadError(422, f"{name}: not a readable image (no {READ_FORMATS} header)") from None
    except Exception:  # noqa: BLE001 - a header PIL stumbles on: decoding says what is wrong
        return
    pixels = width * height
    if pixels > MAX_UPLOAD_PIXELS:
        raise UploadError(413, f"{name}: the image declares {width} x {height} pixels; the server decodes at most "
                               f"{MAX_UPLOAD_PIXELS:,} pixels per image")
    if pixels > FREE_PIXELS and pixels > MAX_PIXELS_PER_BYTE * len(data):
        raise UploadError(422, f"{name}: the image declares {width} x {height} pixels in only {len(data):,} bytes "
                               f"({pixels / len(data):.0f} pixels per byte): refused as a likely decompression "
                               f"bomb; no photo compresses that far")
