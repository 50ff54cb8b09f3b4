"""OpenAI Files API for batch input and output: upload, read, download, list, delete."""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import Controller, delete, get, post
from litestar.datastructures import UploadFile
from litestar.di import Provide
from litestar.enums import RequestEncodingType
from litestar.params import Body, Parameter
from litestar.response import Stream

from api.auth import require_api_key
from api.files.service import FileList, FileObject
from api.services import Services, get_services
from shared.errors import InvalidRequest


class FileUpload(msgspec.Struct):
    file: UploadFile
    purpose: str


class DeletedFile(msgspec.Struct):
    id: str
    deleted: bool = True
    object: str = "file"


class FilesController(Controller):
    path = "/v1/files"
    tags = ["files"]
    guards = [require_api_key]
    dependencies = {"svc": Provide(get_services, sync_to_thread=False)}

    @post("", status_code=200, summary="Upload a JSONL batch input file (multipart, purpose=batch)")
    async def upload(
        self, data: Annotated[FileUpload, Body(media_type=RequestEncodingType.MULTI_PART)], svc: Services
    ) -> FileObject:
        if not isinstance(data.file, UploadFile):
            raise InvalidRequest("`file` must be a file part", param="file")
        try:
            return await svc.files.upload(data.file.file, data.file.filename, data.purpose)  # type: ignore[arg-type]
        finally:
            await data.file.close()

    @get("", summary="List files")
    async def list_files(
        self,
        svc: Services,
        limit: Annotated[int, Parameter(query="limit", ge=1, le=10000)] = 100,
        after: Annotated[str | None, Parameter(query="after")] = None,
    ) -> FileList:
        return await svc.files.list(limit, after)

    @get("/{file_id:str}", summary="A file's metadata")
    async def read(self, file_id: str, svc: Services) -> FileObject:
        return await svc.files.get(file_id)

    @get("/{file_id:str}/content", summary="A file's bytes")
    async def content(self, file_id: str, svc: Services) -> Stream:
        record = await svc.files.get(file_id)
        return Stream(
            svc.files.content(file_id),
            media_type="application/jsonl",
            headers={
                "Content-Disposition": f'attachment; filename="{record.filename}"',
                "Content-Length": str(record.bytes),
            },
        )

    @delete("/{file_id:str}", status_code=200, summary="Delete a file")
    async def remove(self, file_id: str, svc: Services) -> DeletedFile:
        await svc.files.delete(file_id)
        return DeletedFile(id=file_id)
