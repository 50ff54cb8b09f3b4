"""The one guarded way the API fetches a remote image URL (SSRF defence).

- only http and https, no credentials in the URL;
- the host is resolved here and *every* address must be public (not loopback, private,
  link-local/metadata, unspecified, shared, multicast, or an IPv4 hidden inside an IPv6 form),
  unless it lies in IMAGE_FETCH_ALLOW_NETWORKS (empty by default; tests use it);
- the TCP connection goes to the address that was checked (the check lives in the network
  backend, so DNS rebinding between check and connect is impossible), TLS still verifies the
  host name;
- every redirect hop is a new request through the same checks; a byte cap and a total deadline.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from urllib.parse import urljoin, urlsplit

import httpcore

from shared.errors import InvalidRequest, PayloadTooLarge
from shared.settings import Settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_REDIRECTS = {301, 302, 303, 307, 308}
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class BlockedDestination(Exception):
    """The URL's host resolves to an address the service must not connect to."""


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


class AddressPolicy:
    def __init__(self, allow_networks: Iterable[str]) -> None:
        self.allow = [ipaddress.ip_network(n, strict=False) for n in allow_networks]

    def permits(self, ip: IPAddress) -> bool:
        if any(ip.version == net.version and ip in net for net in self.allow):
            return True
        if isinstance(ip, ipaddress.IPv6Address):
            inner = _embedded_ipv4(ip)
            if inner is not None:
                return self.permits(inner)
        return ip.is_global and not ip.is_multicast


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


def _check_url(url: str, param: str | None) -> tuple[str, bytes]:
    """(url, Host header) for an http(s) URL without credentials, or a 400."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise InvalidRequest("the image URL is malformed", param=param, code="invalid_image_url") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise InvalidRequest("image URLs must be http(s) or data: URLs", param=param, code="invalid_image_url")
    if not parts.hostname or parts.username is not None or parts.password is not None:
        raise InvalidRequest("the image URL needs a host and no credentials", param=param, code="invalid_image_url")
    try:
        host = parts.hostname.encode("idna")
    except UnicodeError:
        raise InvalidRequest("the image URL's host name is invalid", param=param, code="invalid_image_url") from None
    if ":" in parts.hostname:
        host = b"[" + host + b"]"
    return url, host + (f":{port}".encode() if port else b"")


class RemoteImageFetcher:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.pool = httpcore.AsyncConnectionPool(
            network_backend=GuardedBackend(AddressPolicy(settings.image_fetch_allow_networks)),
            max_connections=64,
            keepalive_expiry=30,
            retries=0,
        )

    async def fetch(self, url: str, param: str | None = None) -> bytes:
        timeout = self.settings.image_fetch_timeout_s
        try:
            return await asyncio.wait_for(self._follow(url, param), timeout)
        except TimeoutError:
            raise InvalidRequest(
                f"fetching the image URL took longer than {timeout:g} s", param=param, code="image_fetch_timeout"
            ) from None
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
        ):
            raise InvalidRequest("the image URL could not be fetched", param=param, code="image_fetch_failed") from None

    async def _follow(self, url: str, param: str | None) -> bytes:
        for _hop in range(self.settings.image_fetch_max_redirects + 1):
            url, host = _check_url(url, param)
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
                if response.status != 200:
                    raise InvalidRequest(
                        f"the image URL answered HTTP {response.status}", param=param, code="image_fetch_failed"
                    )
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


def _header(response: httpcore.Response, name: bytes) -> str | None:
    for key, value in response.headers:
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None
