"""OpenAI Files API for batch input and output: upload, read, download, list, delete."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from litestar import Controller, delete, get, post
from litestar.datastructures import UploadFile
from litestar.di import NamedDependency
from litestar.enums import RequestEncodingType
from litestar.params import Body, FromPath, QueryParameter
from litestar.response import Stream

from api.files.protocol import DeletedFile, FileList, FileObject, FileUpload
from api.files.service import FileService
from shared.errors import InvalidRequest


def content_disposition(filename: str) -> str:
    """RFC 6266 `attachment` with an ASCII fallback and the exact name as RFC 5987 UTF-8."""
    fallback = "".join(c if " " <= c <= "~" and c not in '"\\' else "_" for c in filename) or "download"
    exact = quote(filename, safe="")
    if exact == filename:
        return f'attachment; filename="{fallback}"'
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{exact}"


class FilesController(Controller):
    path = "/v1/files"
    tags = ["files"]

    @post("", status_code=200, summary="Upload a JSONL batch input file (multipart, purpose=batch)")
    async def upload(
        self,
        data: Annotated[FileUpload, Body(media_type=RequestEncodingType.MULTI_PART)],
        file_service: NamedDependency[FileService],
    ) -> FileObject:
        if not isinstance(data.file, UploadFile):
            raise InvalidRequest("`file` must be a file part", param="file")
        try:
            return await file_service.upload(data.file.file, data.file.filename, data.purpose)  # type: ignore[arg-type]
        finally:
            await data.file.close()

    @get("", summary="List files")
    async def list_files(
        self,
        file_service: NamedDependency[FileService],
        limit: Annotated[int, QueryParameter(name="limit", ge=1, le=10000)] = 100,
        after: Annotated[str | None, QueryParameter(name="after")] = None,
    ) -> FileList:
        return await file_service.list(limit, after)

    @get("/{file_id:str}", summary="A file's metadata")
    async def read(self, file_id: FromPath[str], file_service: NamedDependency[FileService]) -> FileObject:
        return await file_service.get(file_id)

    @get("/{file_id:str}/content", summary="A file's bytes")
    async def content(self, file_id: FromPath[str], file_service: NamedDependency[FileService]) -> Stream:
        record = await file_service.get(file_id)
        return Stream(
            file_service.content(file_id),
            media_type="application/jsonl",
            headers={
                "Content-Disposition": content_disposition(record.filename),
                "Content-Length": str(record.bytes),
            },
        )

    @delete("/{file_id:str}", status_code=200, summary="Delete a file")
    async def remove(self, file_id: FromPath[str], file_service: NamedDependency[FileService]) -> DeletedFile:
        await file_service.delete(file_id)
        return DeletedFile(id=file_id)
