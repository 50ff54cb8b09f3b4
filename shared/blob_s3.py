"""Blob store on any S3-compatible service (AWS S3, MinIO, Ceph) through boto3."""

from __future__ import annotations

import io
from typing import Any, BinaryIO, cast

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from shared.blobstore import BlobNotFound, BlobStoreUnavailable
from shared.settings import Settings

_MISSING_CODES = {"404", "NoSuchKey", "NotFound"}


class S3BlobStore:
    def __init__(self, client: Any, bucket: str, prefix: str = "") -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix

    @classmethod
    def from_settings(cls, settings: Settings) -> S3BlobStore:
        config = Config(
            connect_timeout=3,
            read_timeout=20,
            retries={"max_attempts": 3, "mode": "standard"},
            # MinIO and most self-hosted stores want path-style addressing.
            s3={"addressing_style": "path" if settings.s3_endpoint_url else "auto"},
            max_pool_connections=64,
        )
        client = boto3.client(
            "s3",
            endpoint_url=settings.s3_endpoint_url,
            region_name=settings.s3_region or "us-east-1",
            aws_access_key_id=settings.s3_access_key_id,
            aws_secret_access_key=settings.s3_secret_access_key,
            config=config,
        )
        assert settings.s3_bucket is not None  # guaranteed by settings validation
        return cls(client, settings.s3_bucket, settings.s3_prefix)

    def _key(self, key: str) -> str:
        return self.prefix + key

    def put_bytes(self, key: str, data: bytes) -> None:
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)
        except (BotoCoreError, ClientError) as exc:
            raise BlobStoreUnavailable("blob store write failed") from exc

    def put_stream(self, key: str, stream: BinaryIO) -> None:
        try:
            self.client.upload_fileobj(stream, self.bucket, self._key(key))
        except (BotoCoreError, ClientError) as exc:
            raise BlobStoreUnavailable("blob store write failed") from exc

    def _get(self, key: str, offset: int = 0) -> Any:
        extra = {"Range": f"bytes={offset}-"} if offset else {}
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key), **extra)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code in _MISSING_CODES:
                raise BlobNotFound(f"blob {key!r} not found") from None
            if code == "InvalidRange":  # reading from the very end: nothing left
                return {"Body": io.BytesIO(b"")}
            raise BlobStoreUnavailable("blob store read failed") from exc
        except BotoCoreError as exc:
            raise BlobStoreUnavailable("blob store read failed") from exc

    def get_bytes(self, key: str) -> bytes:
        body = self._get(key)["Body"]
        try:
            return cast(bytes, body.read())
        except (BotoCoreError, ClientError) as exc:
            raise BlobStoreUnavailable("blob store read failed") from exc
        finally:
            body.close()

    def open_stream(self, key: str, offset: int = 0) -> BinaryIO:
        return cast(BinaryIO, self._get(key, offset)["Body"])

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _MISSING_CODES:
                return False
            raise BlobStoreUnavailable("blob store lookup failed") from exc
        except BotoCoreError as exc:
            raise BlobStoreUnavailable("blob store lookup failed") from exc

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except (BotoCoreError, ClientError) as exc:
            raise BlobStoreUnavailable("blob store delete failed") from exc

    def check(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except (BotoCoreError, ClientError) as exc:
            raise BlobStoreUnavailable("blob store bucket is not reachable") from exc
