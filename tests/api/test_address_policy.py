"""The SSRF address policy, table-driven: every embedded-IPv4 form is judged by the IPv4 inside."""

from __future__ import annotations

import ipaddress

import pytest

from api.intake.address_policy import AddressPolicy, embedded_ipv4

POLICY = AddressPolicy([])

REFUSED = [
    # plain IPv4 that is not public
    "127.0.0.1",
    "10.1.2.3",
    "172.16.0.1",
    "192.168.0.1",
    "169.254.169.254",  # cloud metadata
    "100.64.0.1",
    "0.0.0.0",
    "224.0.0.1",
    "255.255.255.255",
    "168.63.129.16",  # Azure WireServer: public on paper
    # plain IPv6 that is not public
    "::1",
    "::",
    "fe80::1",
    "fd00:ec2::254",  # AWS metadata over IPv6
    "fec0::1",  # site-local
    "fed0:1234::5",
    "ff02::1",
    # IPv4-mapped ::ffff:0:0/96
    "::ffff:127.0.0.1",
    "::ffff:10.0.0.1",
    "::ffff:a9fe:a9fe",
    "::ffff:168.63.129.16",
    # IPv4-compatible ::/96 (deprecated)
    "::7f00:1",
    "::a9fe:a9fe",
    "::10.0.0.1",
    # SIIT IPv4-translated ::ffff:0:0:0/96
    "::ffff:0:7f00:1",
    "::ffff:0:a9fe:a9fe",
    # NAT64 well-known prefix 64:ff9b::/96
    "64:ff9b::a9fe:a9fe",
    "64:ff9b::7f00:1",
    # NAT64 local-use 64:ff9b:1::/48, at each RFC 6052 position
    "64:ff9b:1::7f00:1",  # /96
    "64:ff9b:1:0:a9:fea9:fe00:0",  # /64: 169.254.169.254 in bits 72-103
    "64:ff9b:1:a9fe:a9:fe00::",  # /48: 169.254 in bits 48-63, 169.254 in 72-87
    "64:ff9b:1:a:a:a0a::",  # /56: 10 in bits 56-63, 10.10.10 in 72-95
    # 6to4 2002::/16
    "2002:7f00:0001::1",
    "2002:a9fe:a9fe::1",
    "2002:a83f:8110::1",  # 6to4 of 168.63.129.16
    # Teredo 2001::/32: client 127.0.0.1 (obfuscated), and a private server address
    "2001:0:4136:e378:8000:63bf:80ff:fffe",
    "2001:0:a00:1:8000:63bf:f7f6:f7f7",
]

PERMITTED = [
    "8.8.8.8",
    "1.1.1.1",
    "2606:4700:4700::1111",
    "::ffff:8.8.8.8",
    "64:ff9b::808:808",
    "2002:808:808::1",
    "2001:0:4136:e378:8000:63bf:f7f6:f7f7",  # Teredo, public server and client 8.9.8.8
]


@pytest.mark.parametrize("address", REFUSED)
def test_refused(address: str) -> None:
    assert not POLICY.permits(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", PERMITTED)
def test_permitted(address: str) -> None:
    assert POLICY.permits(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    ("address", "inner"),
    [
        ("::ffff:1.2.3.4", ["1.2.3.4"]),
        ("::1.2.3.4", ["1.2.3.4"]),
        ("::ffff:0:1.2.3.4", ["1.2.3.4"]),
        ("64:ff9b::1.2.3.4", ["1.2.3.4"]),
        ("2002:102:304::", ["1.2.3.4"]),
        ("2001:0:4136:e378:8000:63bf:fefd:fcfb", ["65.54.227.120", "1.2.3.4"]),
        ("64:ff9b:1:102:3:400::", ["1.2.3.4", "2.3.4.0", "3.4.0.0", "0.0.0.0"]),
        ("2606:4700:4700::1111", []),
    ],
)
def test_embedded_ipv4_decoding(address: str, inner: list[str]) -> None:
    assert [str(v4) for v4 in embedded_ipv4(ipaddress.IPv6Address(address))] == inner


def test_allow_list_opens_exactly_its_networks() -> None:
    policy = AddressPolicy(["127.0.0.2/32"])
    assert policy.permits(ipaddress.ip_address("127.0.0.2"))
    assert policy.permits(ipaddress.ip_address("::ffff:127.0.0.2"))
    assert not policy.permits(ipaddress.ip_address("127.0.0.1"))
