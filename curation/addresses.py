"""Which network addresses the crawler may connect to.

Only globally routable unicast addresses, by default: private (RFC 1918, ULA), loopback,
link-local (incl. 169.254.169.254 cloud metadata), shared (CGNAT), multicast, reserved and
unspecified addresses are refused, so a page or a redirect cannot steer the crawler into the
local network. `allow_loopback` opens 127.0.0.0/8 and ::1 only (for crawling trees served on this
machine); it never opens private or link-local ranges.

The check runs twice: before each request on the resolved addresses (`check_host`), and inside
the HTTP client's resolver (`PolicyResolver`), so the address actually connected to is the one
checked (no DNS-rebinding window between check and connect).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket

from aiohttp.abc import AbstractResolver
from aiohttp.resolver import DefaultResolver

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class AddressRefused(OSError):
    """The host resolves to an address the policy forbids."""


def refusal(ip: IPAddress, allow_loopback: bool) -> str | None:
    """Why `ip` may not be contacted, or None when it may."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return None if allow_loopback else "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_reserved:
        return "reserved"
    if ip.is_private:
        return "private"
    if not ip.is_global:  # e.g. shared address space 100.64.0.0/10
        return "reserved"
    return None


def check_ips(host: str, ips: list[str], allow_loopback: bool) -> None:
    """Raise AddressRefused unless every address `host` resolved to is allowed."""
    if not ips:
        raise AddressRefused(f"{host}: resolves to no address")
    for raw in ips:
        ip = ipaddress.ip_address(raw.split("%", 1)[0])  # drop an IPv6 zone id
        why = refusal(ip, allow_loopback)
        if why:
            raise AddressRefused(f"{host} -> {ip}: {why} address refused")


async def resolve(host: str, port: int) -> list[str]:
    host = host.strip("[]")
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({info[4][0] for info in infos})


async def check_host(host: str, port: int, allow_loopback: bool) -> None:
    """Resolve `host` and raise AddressRefused if any of its addresses is forbidden."""
    check_ips(host, await resolve(host, port), allow_loopback)


class PolicyResolver(AbstractResolver):
    """aiohttp resolver that refuses forbidden addresses at connect time."""

    def __init__(self, allow_loopback: bool):
        self._inner = DefaultResolver()
        self._allow_loopback = allow_loopback

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET):
        results = await self._inner.resolve(host, port, family)
        check_ips(host, [r["host"] for r in results], self._allow_loopback)
        return results

    async def close(self) -> None:
        await self._inner.close()
