"""Both blob stores pass the same tests: a local directory, and S3 through boto3 (moto server)."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.blob_local import LocalBlobStore
from shared.blob_s3 import S3BlobStore
from shared.blobstore import BlobNotFound, BlobStore, BlobStoreUnavailable, create_blob_store, get_image, put_image
from shared.settings_sources import load_settings


def s3_settings(endpoint: str, prefix: str) -> dict[str, str]:
    return {
        "BLOB_STORE": "s3",
        "S3_BUCKET": "omega-test",
        "S3_ENDPOINT_URL": endpoint,
        "S3_PREFIX": prefix,
        "S3_ACCESS_KEY_ID": "test",
        "S3_SECRET_ACCESS_KEY": "test",
    }


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path, s3_endpoint: str) -> Iterator[BlobStore]:
    if request.param == "local":
        env = {"BLOB_DIR": str(tmp_path / "blobs")}
    else:
        env = s3_settings(s3_endpoint, f"unit-{tmp_path.name}/")
    yield create_blob_store(load_settings(environ=env))


def test_round_trip(store: BlobStore) -> None:
    store.put_bytes("a/b/c.bin", b"payload")
    assert store.exists("a/b/c.bin")
    assert store.get_bytes("a/b/c.bin") == b"payload"
    store.put_bytes("a/b/c.bin", b"replaced")
    assert store.get_bytes("a/b/c.bin") == b"replaced"


def test_streams(store: BlobStore) -> None:
    data = bytes(range(256)) * 4096  # 1 MiB
    store.put_stream("files/big.jsonl", io.BytesIO(data))
    with store.open_stream("files/big.jsonl") as stream:  # type: ignore[attr-defined]
        assert stream.read() == data
    with store.open_stream("files/big.jsonl", offset=1000) as stream:  # type: ignore[attr-defined]
        assert stream.read() == data[1000:]


def test_missing_key(store: BlobStore) -> None:
    assert not store.exists("nope/missing")
    with pytest.raises(BlobNotFound) as err:
        store.get_bytes("nope/missing")
    assert err.value.status_code == 404
    with pytest.raises(BlobNotFound):
        store.open_stream("nope/missing")


def test_delete(store: BlobStore) -> None:
    store.put_bytes("gone/soon", b"x")
    store.delete("gone/soon")
    assert not store.exists("gone/soon")
    store.delete("gone/soon")  # deleting twice is fine


def test_images_are_content_addressed_and_stored_once(store: BlobStore) -> None:
    data = b"\x89PNG fake image bytes"
    digest = put_image(store, data)
    assert digest == hashlib.sha256(data).hexdigest()
    assert put_image(store, data) == digest
    assert get_image(store, digest) == data
    store.check()


def test_local_keys_cannot_escape_the_root(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "root")
    for key in ("../escape", "/abs/path", "a/../../b", "", "a//b"):
        with pytest.raises(ValueError):
            store.put_bytes(key, b"x")


def test_local_store_unwritable_is_unavailable(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    store = LocalBlobStore(blocker / "blobs")
    with pytest.raises(BlobStoreUnavailable) as err:
        store.put_bytes("images/x", b"x")
    assert err.value.status_code == 503
    with pytest.raises(BlobStoreUnavailable):
        store.check()


def test_s3_unreachable_is_unavailable() -> None:
    from tests.support.procs import free_port

    store = S3BlobStore.from_settings(load_settings(environ=s3_settings(f"http://127.0.0.1:{free_port()}", "")))
    for call in (
        lambda: store.put_bytes("k", b"x"),
        lambda: store.get_bytes("k"),
        lambda: store.exists("k"),
        store.check,
    ):
        with pytest.raises(BlobStoreUnavailable) as err:
            call()
        assert err.value.status_code == 503 and "Retry-After" in err.value.headers
