"""Which IP addresses a remote image fetch may connect to (SSRF defence, checked in-process).

An address is allowed when it is public. An IPv6 address that carries an IPv4 address inside it
(mapped, compatible, translated, NAT64, 6to4, Teredo) is judged by the IPv4 inside: a gateway on
the path would deliver the packets to that IPv4, so `::ffff:127.0.0.1` is loopback in effect.
A few public-looking addresses are refused by name: cloud metadata endpoints and the deprecated
site-local IPv6 range, which routers may still deliver inside a site.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Public on paper, internal in practice.
_DENIED = tuple(
    ipaddress.ip_network(n)
    for n in (
        "168.63.129.16/32",  # Azure WireServer / host agent (metadata, certificates)
        "fec0::/10",  # site-local (deprecated by RFC 3879, still routed inside some sites)
    )
)

_COMPATIBLE = ipaddress.ip_network("::/96")  # IPv4-compatible (deprecated), also :: and ::1
_TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")  # SIIT IPv4-translated (RFC 2765)
_NAT64_WELL_KNOWN = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")  # RFC 8215, operator-chosen sub-prefix

# RFC 6052 section 2.2: where the 32 IPv4 bits sit for each prefix length; bits 64-71 (the
# "u" octet) are always skipped. (start bit, bit count) pieces, most significant first.
_RFC6052_LAYOUTS: tuple[tuple[tuple[int, int], ...], ...] = (
    ((48, 16), (72, 16)),  # /48
    ((56, 8), (72, 24)),  # /56
    ((72, 32),),  # /64
    ((96, 32),),  # /96
)


def _bits(value: int, start: int, count: int) -> int:
    """`count` bits of a 128-bit value, starting at bit `start` from the most significant end."""
    return (value >> (128 - start - count)) & ((1 << count) - 1)


def _rfc6052(ip: ipaddress.IPv6Address, layout: tuple[tuple[int, int], ...]) -> ipaddress.IPv4Address:
    value = 0
    for start, count in layout:
        value = (value << count) | _bits(int(ip), start, count)
    return ipaddress.IPv4Address(value)


def embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """Every IPv4 address the IPv6 address may deliver to; empty for a plain IPv6 address.

    For the local-use NAT64 prefix the operator's prefix length is unknown here, so every
    RFC 6052 position is decoded and each must pass.
    """
    low32 = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.ipv4_mapped is not None:
        return [ip.ipv4_mapped]
    if ip in _COMPATIBLE or ip in _TRANSLATED or ip in _NAT64_WELL_KNOWN:
        return [low32]
    if ip in _NAT64_LOCAL:
        return [_rfc6052(ip, layout) for layout in _RFC6052_LAYOUTS]
    if ip.sixtofour is not None:
        return [ip.sixtofour]
    if ip.teredo is not None:
        server, client = ip.teredo
        return [server, client]
    return []


class AddressPolicy:
    """Public addresses only, except the networks named in IMAGE_FETCH_ALLOW_NETWORKS."""

    def __init__(self, allow_networks: Iterable[str]) -> None:
        self.allow = [ipaddress.ip_network(n, strict=False) for n in allow_networks]

    def _allowed_explicitly(self, ip: IPAddress) -> bool:
        return any(ip.version == net.version and ip in net for net in self.allow)

    def permits(self, ip: IPAddress) -> bool:
        if self._allowed_explicitly(ip):
            return True
        if any(ip.version == net.version and ip in net for net in _DENIED):
            return False
        if isinstance(ip, ipaddress.IPv6Address):
            inner = embedded_ipv4(ip)
            if inner:
                return all(self.permits(v4) for v4 in inner)
        return ip.is_global and not ip.is_multicast
