"""rq serializer: msgpack through msgspec, so nothing in Redis is ever pickled."""

from __future__ import annotations

from typing import Any

import msgspec

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder()


class MsgpackSerializer:
    """Satisfies rq's serializer protocol (`dumps` / `loads`)."""

    @staticmethod
    def dumps(obj: Any) -> bytes:
        return _encoder.encode(obj)

    @staticmethod
    def loads(data: bytes) -> Any:
        return _decoder.decode(data)
