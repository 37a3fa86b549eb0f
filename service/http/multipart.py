"""multipart/form-data parsed in memory from an already size-checked body.

Starlette's request.form() spools every file through a temporary-file object; for small image
uploads that costs more than decoding the image. python-multipart's streaming parser is used
directly instead, collecting each part's bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from service.errors import BadRequest, InvalidRequest

if TYPE_CHECKING:  # defined for type checkers only
    from python_multipart.multipart import MultipartCallbacks


@dataclass
class Part:
    name: str = ""
    filename: str | None = None
    content_type: str = ""
    chunks: list[bytes] = field(default_factory=list)

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)

    @property
    def is_file(self) -> bool:
        return self.filename is not None


def parse_multipart(body: bytes, content_type_header: str, max_parts: int) -> list[Part]:
    """The parts of a multipart body, in order; 400 for a malformed body, 422 for too many parts."""
    _, params = parse_options_header(content_type_header)
    boundary = params.get(b"boundary")
    if not boundary:
        raise BadRequest("multipart/form-data without a boundary parameter", code="invalid_multipart")
    parts: list[Part] = []
    header_name, header_value = bytearray(), bytearray()

    def on_part_begin() -> None:
        if len(parts) >= max_parts:
            raise InvalidRequest(f"more than {max_parts} parts in one form", code="too_many_instances")
        parts.append(Part())

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header_name.extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header_value.extend(data[start:end])

    def on_header_end() -> None:
        name = bytes(header_name).lower()
        part = parts[-1]
        if name == b"content-disposition":
            _, options = parse_options_header(bytes(header_value))
            part.name = options.get(b"name", b"").decode("utf-8", "replace")
            filename = options.get(b"filename")
            part.filename = filename.decode("utf-8", "replace") if filename is not None else None
        elif name == b"content-type":
            part.content_type = bytes(header_value).decode("latin-1").split(";")[0].strip().lower()
        header_name.clear()
        header_value.clear()

    def on_part_data(data: bytes, start: int, end: int) -> None:
        parts[-1].chunks.append(data[start:end])

    callbacks: MultipartCallbacks = {
        "on_part_begin": on_part_begin,
        "on_header_field": on_header_field,
        "on_header_value": on_header_value,
        "on_header_end": on_header_end,
        "on_part_data": on_part_data,
    }
    try:
        parser = MultipartParser(boundary, callbacks)  # refuses a boundary over 256 bytes
        parser.write(body)
        parser.finalize()
    except FormParserError as exc:  # ParseError and the constructor's errors alike
        raise BadRequest(f"the multipart body cannot be parsed ({exc})", code="invalid_multipart") from exc
    return parts
