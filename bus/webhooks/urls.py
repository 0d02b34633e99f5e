"""Which URLs the bus may call: the SSRF policy of webhook endpoints.

A tenant names a URL and the bus's workers send events to it from inside the operator's
network, so a URL must not reach what only that network can: the host itself (loopback,
unspecified), the private and link-local ranges, multicast, reserved space, and the clouds'
metadata services (169.254.169.254, fd00:ec2::254). ``EVENTBUS_WEBHOOK_ALLOW_NETWORKS`` lists
networks that are allowed anyway (a receiver inside the network, the tests' 127.0.0.1). Only
``http``/``https`` are taken, without userinfo (``user:pass@``: credentials in a URL end up in
logs) or a fragment.

Two checks, the same rule:

* :meth:`UrlPolicy.check_url` when an endpoint is created or its URL changed: a literal address,
  or every address a name resolves to (``getaddrinfo``) must be allowed: a name answering one
  public and one private address is refused;
* :meth:`UrlPolicy.check_address` on the address a delivery connects to, after resolving and
  before connecting: DNS may answer differently at delivery than at creation (a short TTL
  rebinding the name to 127.0.0.1), so the first check alone proves nothing at connect time.

IPv6 forms that carry an IPv4 address (``::ffff:10.0.0.1``, NAT64 ``64:ff9b::/96``, 6to4
``2002::/16``) are judged by the IPv4 address they reach.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

from bus.errors import BusError, InvalidField
from bus.settings import Settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

SCHEMES = ("http", "https")
MAX_URL_CHARS = 2048
METADATA_ADDRESSES = frozenset(
    {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}
)
"""Cloud metadata services (AWS, GCP, Azure, and AWS's IPv6 one): credentials for the taking."""
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))

Resolver = Callable[[str, int], list[str]]
"""``(host, port)`` → the addresses the host resolves to (text); empty when it resolves to none."""


class UrlNotAllowed(BusError):
    """A URL whose host is, or resolves to, an address the policy refuses."""

    message = "URL not allowed"


class UrlHostNotFound(BusError):
    """A URL whose host name resolves to no address (nothing to check it against)."""

    message = "URL host not found"


def parse_networks(text: str) -> tuple[IPNetwork, ...]:
    """``EVENTBUS_WEBHOOK_ALLOW_NETWORKS``: comma-separated CIDRs (a bare address is its /32 or
    /128; host bits are dropped: ``127.0.0.1/8`` is ``127.0.0.0/8``); ValueError on another
    entry."""
    return tuple(
        ipaddress.ip_network(part.strip(), strict=False) for part in text.split(",") if part.strip()
    )


def _reached(address: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 form reaches (mapped, NAT64, 6to4); else ``address``."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if any(address in net for net in _NAT64):
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if address.sixtofour is not None:
            return address.sixtofour
    return address


def _refused(address: IPAddress) -> bool:
    """An address no delivery may reach (before the allow-list is asked)."""
    return (
        address in METADATA_ADDRESSES
        or address.is_loopback
        or address.is_private
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or (isinstance(address, ipaddress.IPv6Address) and address.is_site_local)
        or not address.is_global  # the rest of IANA's special ranges (100.64.0.0/10, …)
    )


def resolve_host(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to for a TCP connection (the system's resolver)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return []
    return [str(info[4][0]) for info in infos]


@dataclass(frozen=True, slots=True)
class UrlPolicy:
    """The policy with its allow-list: ``UrlPolicy.from_settings(settings)``."""

    allow: tuple[IPNetwork, ...] = ()

    @staticmethod
    def from_settings(settings: Settings) -> UrlPolicy:
        return _policy(settings.webhook_allow_networks)

    def address_allowed(self, address: str | IPAddress) -> bool:
        """True if a delivery may connect to ``address`` (text may carry an IPv6 ``%zone``)."""
        try:
            parsed = ipaddress.ip_address(address) if isinstance(address, str) else address
        except ValueError:
            return False
        reached = _reached(parsed)
        if any(parsed in net or reached in net for net in self.allow):
            return True
        return not _refused(reached)

    def check_address(self, address: str | IPAddress) -> None:
        """At connect time: ``UrlNotAllowed`` unless a delivery may connect to ``address``."""
        if not self.address_allowed(address):
            raise UrlNotAllowed()

    def check_url(self, url: object, resolve: Resolver = resolve_host) -> str:
        """``url`` as given, once it is an ``http``/``https`` URL (else ``Invalid url``) whose
        host is an allowed address or a name of which every address is allowed (else
        ``URL not allowed``; ``URL host not found`` when it resolves to none)."""
        parts = split_url(url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
        try:
            literal: IPAddress | None = ipaddress.ip_address(host)
        except ValueError:
            literal = None
        addresses: Iterable[str | IPAddress] = [literal] if literal else resolve(host, port)
        addresses = list(addresses)
        if not addresses:
            raise UrlHostNotFound()
        for address in addresses:
            self.check_address(address)
        assert isinstance(url, str)
        return url


@functools.lru_cache(maxsize=8)
def _policy(allow_networks: str) -> UrlPolicy:
    return UrlPolicy(parse_networks(allow_networks))


def split_url(url: object) -> SplitResult:
    """``url``'s parts if it is a URL the bus would call, else ``Invalid url``: at most
    ``MAX_URL_CHARS``, no whitespace nor control character, ``http``/``https`` with a host,
    no userinfo, no fragment, a port (if any) from 1 to 65535."""
    if (
        not isinstance(url, str)
        or len(url) > MAX_URL_CHARS
        or any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in url)
    ):
        raise InvalidField("url")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise InvalidField("url") from None
    if (
        parts.scheme.lower() not in SCHEMES
        or not parts.hostname
        or "@" in parts.netloc
        or parts.fragment
        or "#" in url
        or port == 0
    ):
        raise InvalidField("url")
    return parts
