"""The one guarded way the API fetches a remote image URL (SSRF defence).

- only http and https, no credentials in the URL;
- the host is resolved here and *every* address must be public (not loopback, private,
  link-local/metadata, unspecified, shared, multicast, or an IPv4 hidden inside an IPv6 form:
  see api/address_policy.py), unless it lies in IMAGE_FETCH_ALLOW_NETWORKS (empty by default; tests use it);
- the TCP connection goes to the address that was checked (the check lives in the network
  backend, so DNS rebinding between check and connect is impossible), TLS still verifies the
  host name;
- every redirect hop is a new request through the same checks; a byte cap and a total deadline;
- non-ASCII URLs and Locations are IDNA/percent-encoded, never a 500;
- the image host's own trouble (timeout, refused, 5xx) is a retryable 502/504, not a 400.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import re
import socket
from collections.abc import Iterable
from urllib.parse import quote, urljoin, urlsplit, urlunsplit

import httpcore

from api.intake.address_policy import AddressPolicy
from api.intake.fetch_shares import FetchShares
from shared.errors import BadGateway, GatewayTimeout, InvalidRequest, PayloadTooLarge, ServiceError
from shared.settings import Settings

_REDIRECTS = {301, 302, 303, 307, 308}
# RFC 3986 characters left as they are; everything else (non-ASCII, spaces, controls) is
# percent-encoded as UTF-8, as browsers do. "%" stays so existing escapes are not doubled.
_PATH_SAFE = "/%:@!$&'()*+,;=-._~"
_QUERY_SAFE = _PATH_SAFE + "?"
_HOST_CHARS = re.compile(rb"^[A-Za-z0-9._-]+$")
# getaddrinfo answers meaning "this name does not exist" (the client's mistake, not retryable).
_NO_SUCH_HOST = {socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)}


class BlockedDestination(Exception):
    """The URL's host resolves to an address the service must not connect to."""


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """Resolves, checks every address, then connects to a checked address."""

    def __init__(self, policy: AddressPolicy) -> None:
        self.policy = policy
        self.inner = httpcore.AnyIOBackend()

    async def resolve(self, host: str, port: int) -> list[str]:
        try:
            return [str(ipaddress.ip_address(host.strip("[]")))]
        except ValueError:
            pass
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        return list(dict.fromkeys(str(info[4][0]) for info in infos))

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await self.resolve(host, port)
        if not addresses or not all(self.policy.permits(ipaddress.ip_address(a)) for a in addresses):
            raise BlockedDestination(host)
        last: Exception | None = None
        for address in addresses:
            try:
                return await self.inner.connect_tcp(address, port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        assert last is not None
        raise last

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise BlockedDestination("unix socket")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


def _bad_url(message: str, param: str | None) -> InvalidRequest:
    return InvalidRequest(message, param=param, code="invalid_image_url")


def _ascii_host(hostname: str, param: str | None) -> bytes:
    """The host as sent on the wire: IDNA for names, brackets for IPv6 literals."""
    if ":" in hostname:
        try:
            return b"[" + str(ipaddress.IPv6Address(hostname)).encode() + b"]"
        except ValueError:
            raise _bad_url("the image URL's host is not a valid IPv6 address", param) from None
    try:
        host = hostname.encode("idna")
    except UnicodeError:
        raise _bad_url("the image URL's host name is invalid", param) from None
    if not _HOST_CHARS.match(host):
        raise _bad_url("the image URL's host name is invalid", param)
    return host


def check_url(url: str, param: str | None) -> tuple[str, bytes]:
    """(ASCII URL, Host header) for an http(s) URL without credentials, or a 400.

    Non-ASCII host names are IDNA-encoded and other non-ASCII characters percent-encoded, so
    the request line is always ASCII; the fragment is dropped (it is never sent).
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise _bad_url("the image URL is malformed", param) from None
    if parts.scheme.lower() not in ("http", "https"):
        raise _bad_url("image URLs must be http(s) or data: URLs", param)
    if not parts.hostname or parts.username is not None or parts.password is not None:
        raise _bad_url("the image URL needs a host and no credentials", param)
    host = _ascii_host(parts.hostname, param) + (f":{port}".encode() if port else b"")
    path = quote(parts.path, safe=_PATH_SAFE) or "/"
    query = quote(parts.query, safe=_QUERY_SAFE)
    return urlunsplit((parts.scheme.lower(), host.decode(), path, query, "")), host


def _deadline_error(timeout: float, param: str | None) -> GatewayTimeout:
    return GatewayTimeout(
        f"the image host did not deliver the image within {timeout:g} s; retry later",
        param=param,
        code="image_fetch_timeout",
    )


def _network_error(exc: Exception, param: str | None) -> ServiceError:
    """Upstream trouble is retryable (502/504); a host name that does not exist is a 400."""
    if isinstance(exc, socket.gaierror) and exc.errno in _NO_SUCH_HOST:
        return InvalidRequest("the image URL's host name does not resolve", param=param, code="image_host_unknown")
    if isinstance(exc, httpcore.TimeoutException | TimeoutError):
        return GatewayTimeout("the image host timed out; retry later", param=param, code="image_fetch_timeout")
    if isinstance(exc, httpcore.ConnectError | ConnectionRefusedError) or getattr(exc, "errno", None) in (
        errno.ECONNREFUSED,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
    ):
        return BadGateway(
            "the image host could not be reached; retry later", param=param, code="image_host_unreachable"
        )
    return BadGateway("the image host failed to deliver the image; retry later", param=param, code="image_fetch_failed")


class RemoteImageFetcher:
    """Fetches through one guarded connection pool, of which batch work may hold only a share."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        size = settings.image_fetch_pool_size
        self.pool = httpcore.AsyncConnectionPool(
            network_backend=GuardedBackend(AddressPolicy(settings.image_fetch_allow_networks)),
            max_connections=size,
            keepalive_expiry=30,
            retries=0,
        )
        self.shares = FetchShares(size, settings.image_fetch_batch_share)

    async def fetch(self, url: str, param: str | None = None, *, batch_id: str | None = None) -> bytes:
        """The image's bytes. A batch line's fetch first waits for its batch's share of the pool
        (api/fetch_shares.py), so the rest stays free for interactive requests and other batches."""
        async with self.shares.slot(batch_id):
            return await self._fetch(url, param)

    async def _fetch(self, url: str, param: str | None) -> bytes:
        timeout = self.settings.image_fetch_timeout_s
        try:
            return await asyncio.wait_for(self._follow(url, param), timeout)
        except TimeoutError:
            raise _deadline_error(timeout, param) from None
        except BlockedDestination:
            raise InvalidRequest(
                "the image URL points to a non-public address, which is not allowed",
                param=param,
                code="image_url_blocked",
            ) from None
        except (
            httpcore.NetworkError,
            httpcore.ProtocolError,
            httpcore.UnsupportedProtocol,
            httpcore.TimeoutException,
            OSError,
        ) as exc:
            raise _network_error(exc, param) from None

    async def _follow(self, url: str, param: str | None) -> bytes:
        for _hop in range(self.settings.image_fetch_max_redirects + 1):
            url, host = check_url(url, param)
            headers = [(b"Host", host), (b"User-Agent", b"omega-vlm-image-fetch/1"), (b"Accept", b"image/*")]
            async with self.pool.stream("GET", url, headers=headers) as response:
                if response.status in _REDIRECTS:
                    location = _header(response, b"location")
                    if not location:
                        raise InvalidRequest(
                            "the image URL redirected without a location", param=param, code="image_fetch_failed"
                        )
                    url = urljoin(url, location)
                    continue
                _check_status(response.status, param)
                return await self._read_capped(response, param)
        raise InvalidRequest("the image URL redirected too many times", param=param, code="image_fetch_failed")

    async def _read_capped(self, response: httpcore.Response, param: str | None) -> bytes:
        cap = self.settings.max_image_bytes
        declared = _header(response, b"content-length")
        if declared and declared.isdigit() and int(declared) > cap:
            raise PayloadTooLarge(f"the remote image is larger than MAX_IMAGE_BYTES={cap}", param=param)
        body = bytearray()
        async for chunk in response.aiter_stream():
            body += chunk
            if len(body) > cap:
                raise PayloadTooLarge(f"the remote image is larger than MAX_IMAGE_BYTES={cap}", param=param)
        return bytes(body)

    async def close(self) -> None:
        await self.pool.aclose()


def _check_status(status: int, param: str | None) -> None:
    """200 passes; the host's own trouble (5xx, 429) is retryable, other answers are the URL's fault."""
    if status == 200:
        return
    message = f"the image URL answered HTTP {status}"
    if status >= 500 or status == 429:
        raise BadGateway(message + "; retry later", param=param, code="image_host_error")
    raise InvalidRequest(message, param=param, code="image_fetch_failed")


def _header(response: httpcore.Response, name: bytes) -> str | None:
    """A header as text: UTF-8 when it decodes (non-ASCII Locations are sent so), else Latin-1."""
    for key, value in response.headers:
        if key.lower() == name:
            try:
                return str(value.decode("utf-8"))
            except UnicodeDecodeError:
                return str(value.decode("latin-1"))
    return None
