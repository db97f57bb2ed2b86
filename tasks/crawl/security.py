"""SSRF guard: only http(s) to public addresses (plus an explicit allow-list), checked on every hop.

The allow-list holds addresses / CIDRs (any port) and exact origins `http://host:port`: the
stage's own sample server is allowed as its origin only, never as "all of 127.0.0.1", so a
redirect to another port, or to a host NAME resolving to 127.0.0.1, is refused.

The guard is also the aiohttp resolver, so the connector connects to exactly the addresses that
were checked (no second lookup an attacker's DNS could answer differently). IP literals skip the
resolver inside aiohttp, which is why `check()` runs before every request and redirect hop.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import Iterable, Mapping
from typing import Any, Protocol
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult

from tasks.crawl.errors import CrawlError
from tasks.crawl.urlscreen import DEFAULT_RULES, UrlRules, screen

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# Cloud metadata endpoints that are not all covered by "not global" (kept explicit for clarity).
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "169.254.170.2", "100.100.100.200", "192.0.0.192", "fd00:ec2::254")
)


class BaseResolver(Protocol):
    """Name -> addresses; the system resolver in production, a stub in tests."""

    async def lookup(self, host: str) -> list[str]: ...


class SystemResolver:
    """getaddrinfo in the event loop's thread pool (what aiohttp's ThreadedResolver does)."""

    async def lookup(self, host: str) -> list[str]:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
        return list(dict.fromkeys(str(info[4][0]) for info in infos))


class StubResolver:
    """A fixed name -> addresses table, so tests never resolve a real name; records every lookup."""

    def __init__(self, table: Mapping[str, Iterable[str]]) -> None:
        self.table = {k.lower(): list(v) for k, v in table.items()}
        self.lookups: list[str] = []

    async def lookup(self, host: str) -> list[str]:
        self.lookups.append(host)
        try:
            return self.table[host.lower().rstrip(".")]
        except KeyError:
            raise socket.gaierror(
                socket.EAI_NONAME, f"stub resolver: unknown host {host}"
            ) from None


Origin = tuple[str, int]  # (host, port) allowed exactly, whatever its address


def _origin(entry: str) -> Origin:
    """`http://host:port` -> (host, port); the port defaults to the scheme's."""
    parts = urlsplit(entry.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname or "@" in parts.netloc:
        raise ValueError
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.hostname.lower().rstrip("."), port


def parse_allow(
    entries: Iterable[str],
) -> tuple[list[ipaddress.IPv4Network | ipaddress.IPv6Network], frozenset[Origin]]:
    """Allow-list entries: addresses or CIDRs (any port), or exact origins `http://host:port`
    (that host name and port only); a bad entry is an error naming it."""
    nets, origins = [], set()
    for entry in entries:
        try:
            if "://" in entry:
                origins.add(_origin(entry))
            else:
                nets.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            raise ValueError(
                f"policy.allow_addresses: {entry!r} is not an IP address, a CIDR or an "
                "origin http://host:port"
            ) from None
    return nets, frozenset(origins)


def parse_networks(entries: Iterable[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """The address / CIDR entries of an allow-list (origins left out)."""
    return parse_allow(entries)[0]


def refusal_reason(ip: IPAddress) -> str | None:
    """Why an address must not be contacted, or None when it is a public unicast address."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        return refusal_reason(ip.ipv4_mapped)
    if ip in METADATA_ADDRESSES:
        return "cloud metadata"
    for label, flag in (
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("unspecified", ip.is_unspecified),
        ("multicast", ip.is_multicast),
        ("private", ip.is_private),
        ("reserved", ip.is_reserved),
    ):
        if flag:
            return label
    return None if ip.is_global else "non-global"


class UrlGuard(AbstractResolver):
    """Checks URLs and resolves hosts with a TTL cache, returning only allowed addresses."""

    def __init__(
        self,
        allow: Iterable[str] = (),
        base: BaseResolver | None = None,
        ttl_s: float = 300.0,
        rules: UrlRules = DEFAULT_RULES,
    ) -> None:
        self.allow, self.origins = parse_allow(allow)
        self.base = base or SystemResolver()
        self.ttl_s = ttl_s
        self.rules = rules
        self._cache: dict[str, tuple[float, list[str]]] = {}
        self._verdicts: dict[str, str | None] = {}
        self._literals: dict[str, str | None] = {}
        self.refused: int = 0

    def allowed(self, ip: IPAddress) -> str | None:
        """None when the address may be contacted, else the refusal reason."""
        if any(ip in net for net in self.allow):
            return None
        return refusal_reason(ip)

    def _verdict(self, addr: str) -> str | None:
        """allowed() of an address string, memoised: it depends only on the address and the
        allow-list, and every request of a crawl asks it again."""
        try:
            return self._verdicts[addr]
        except KeyError:
            verdict = self._verdicts[addr] = self.allowed(ipaddress.ip_address(addr))
            return verdict

    def _literal(self, host: str) -> str | None:
        """The host as an IP address string when it is an IP literal, else None (memoised)."""
        try:
            return self._literals[host]
        except KeyError:
            try:
                literal: str | None = str(ipaddress.ip_address(host.strip("[]")))
            except ValueError:
                literal = None
            self._literals[host] = literal
            return literal

    async def addresses(self, host: str, port: int | None = None) -> list[str]:
        """Addresses of `host` the connector may use (cached lookups); CrawlError dns_error /
        address_refused otherwise. An allowed origin (host and port exactly) skips the address
        check; every other host:port gets only the addresses the allow-list or policy admits."""
        host = host.lower().rstrip(".")
        literal = self._literal(host)
        if literal is not None:
            addrs = [literal]
        else:
            cached = self._cache.get(host)
            if cached and cached[0] > time.monotonic():
                addrs = cached[1]
            else:
                try:
                    addrs = await self.base.lookup(host)
                except (OSError, UnicodeError) as exc:
                    raise CrawlError("dns_error", f"{host}: {exc}") from None
                self._cache[host] = (time.monotonic() + self.ttl_s, addrs)
        if port is not None and (host.strip("[]"), port) in self.origins:
            return addrs
        ok = [a for a in addrs if self._verdict(a) is None]
        if not ok:
            self.refused += 1
            reasons = {a: self._verdict(a) for a in addrs}
            where = f"{host}:{port}" if port is not None else host
            raise CrawlError("address_refused", f"{where} -> {reasons}")
        return ok

    async def check(self, url: str) -> str:
        """The URL to request (credentials screened away) if it is http(s) to an allowed
        origin or address; run before every request and every redirect hop."""
        url = screen(url, self.rules)
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
        await self.addresses(host, port)
        return url

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """aiohttp's hook: the connector connects only to what this returns, checked now.

        A host name is looked up again here when its cache entry has expired, and whatever
        this lookup answers is checked before it is returned: a name that resolved to a
        public address in check() and to a private one now (DNS rebinding) is refused here.
        """
        try:
            addrs = await self.addresses(host, port or None)
        except CrawlError as exc:
            raise OSError(f"clipmill guard: {exc}") from exc
        out: list[ResolveResult] = []
        for addr in addrs:
            fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
            out.append(
                {
                    "hostname": host,
                    "host": addr,
                    "port": port,
                    "family": fam,
                    "proto": 0,
                    "flags": socket.AI_NUMERICHOST,
                }
            )
        return out

    async def close(self) -> None:
        return None


def guard_from(
    allow: Iterable[str],
    stub: Mapping[str, Iterable[str]] | None = None,
    rules: UrlRules = DEFAULT_RULES,
    **kw: Any,
) -> UrlGuard:
    """Build a guard inside the worker (resolvers hold loop state, so they are never pickled)."""
    return UrlGuard(allow, StubResolver(stub) if stub is not None else None, rules=rules, **kw)


def rules_of(policy: Any) -> UrlRules:
    """The URL rules of a crawl's `policy` section."""
    return UrlRules(policy.url_credentials, policy.max_url_length)
