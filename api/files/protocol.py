"""The files slice's wire types (OpenAI's File object, list, upload form and deletion)."""

from __future__ import annotations

import msgspec
from litestar.datastructures import UploadFile


class FileObject(msgspec.Struct, kw_only=True):
    id: str
    bytes: int
    created_at: int
    filename: str
    purpose: str
    object: str = "file"
    status: str = "processed"
    status_details: str | None = None


class FileList(msgspec.Struct):
    data: list[FileObject]
    object: str = "list"
    has_more: bool = False


class FileUpload(msgspec.Struct):
    file: UploadFile
    purpose: str


class DeletedFile(msgspec.Struct):
    id: str
    deleted: bool = True
    object: str = "file"
