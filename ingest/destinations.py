"""Where a source may point: the destination policy for networks and local files.

A source URL is data from a caller, so ingest must not become a way into the service's own
network (cloud metadata at 169.254.169.254, the Redis that holds the queue, the API itself).
Network sources are checked for every address their host name resolves to, when they are
registered and again before every connect (a name can re-resolve elsewhere). An address is
allowed unless the most specific matching network is a denied one; an allowed network wins a
tie, so ``VIDMEM_ALLOWED_NETWORKS=["10.1.0.0/16"]`` opens one camera subnet and nothing more.
Refusals carry one generic message: a caller cannot learn from them whether a host, a port or a
file exists.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from pathlib import Path

from ingest.errors import DestinationRefused

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

# Everything that is not a public unicast address, so a default deployment reaches only the internet.
DEFAULT_DENIED_NETWORKS: tuple[str, ...] = (
    "0.0.0.0/8",  # "this host", unspecified
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",  # private
    "100.64.0.0/10",  # carrier-grade NAT
    "127.0.0.0/8",  # loopback
    "169.254.0.0/16",  # link-local, cloud metadata services
    "192.0.0.0/24", "192.0.2.0/24", "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24",  # IETF, test nets
    "224.0.0.0/4", "240.0.0.0/4",  # multicast; reserved and broadcast
    "::/96",  # unspecified, loopback and IPv4-compatible
    "::1/128", "fc00::/7", "fe80::/10", "fec0::/10", "ff00::/8", "100::/64", "2001:db8::/32",
)
NETWORK_REFUSED = "source refused by the destination policy"
FILES_DISABLED = "local files are disabled in the settings"
_NAT64 = ip_network("64:ff9b::/96")


@dataclass(frozen=True)
class DestinationPolicy:
    """Allowed and denied networks for network sources, and the one folder file sources may come from."""

    allowed_networks: tuple[IPNetwork, ...] = ()
    denied_networks: tuple[IPNetwork, ...] = field(default_factory=lambda: parse_networks(DEFAULT_DENIED_NETWORKS))
    file_dir: Path | None = None  # None: no file sources at all

    @classmethod
    def build(cls, allowed: Iterable[str], denied: Iterable[str], file_dir: str | Path | None) -> DestinationPolicy:
        """A policy from settings' strings; the file folder is resolved once, symlinks included."""
        folder = Path(os.path.realpath(file_dir)) if file_dir is not None else None
        return cls(parse_networks(allowed), parse_networks(denied), folder)

    def allows_address(self, address: str | IPAddress) -> bool:
        """True when ``address`` (and any IPv4 address it embeds) may be reached."""
        return all(self._allows_one(ip) for ip in _addresses_within(_parse_address(address)))

    def _allows_one(self, ip: IPAddress) -> bool:
        allow = max((net.prefixlen for net in self.allowed_networks if ip in net), default=-1)
        deny = max((net.prefixlen for net in self.denied_networks if ip in net), default=-1)
        return allow >= deny

    def check_host(self, host: str, port: int | None) -> tuple[str, ...]:
        """Every address ``host`` resolves to, if all are allowed; else DestinationRefused (generic)."""
        addresses = resolve(host, port)
        if not addresses or not all(self.allows_address(a) for a in addresses):
            raise DestinationRefused(NETWORK_REFUSED)
        return addresses

    def check_file(self, raw_path: str) -> Path:
        """The resolved path of a file source under ``file_dir``; the refusal is the same whether it exists or not."""
        if self.file_dir is None:
            raise DestinationRefused(FILES_DISABLED)
        path = Path(raw_path)  # no ~ expansion: "~user/x" is a plain relative name
        if not path.is_absolute():
            path = self.file_dir / path
        try:
            resolved = Path(os.path.realpath(path))  # symlinks and ".." resolved before the check
            inside = resolved.is_relative_to(self.file_dir)
            is_file = inside and resolved.is_file()
        except (OSError, ValueError):  # a name too long, a NUL byte: no such file, not a 500
            inside, is_file = False, False
        if not inside:
            raise DestinationRefused(f"file sources must be under {self.file_dir}")
        if not is_file:  # inside the allowed folder, saying so reveals nothing new
            raise DestinationRefused(f"no such file under {self.file_dir}: {resolved.relative_to(self.file_dir)}")
        return resolved


def parse_networks(values: Iterable[str]) -> tuple[IPNetwork, ...]:
    """Networks from strings ("10.0.0.0/8", "::1"); a bad entry raises ValueError naming it."""
    return tuple(ip_network(str(value).strip(), strict=False) for value in values)


def resolve(host: str, port: int | None) -> tuple[str, ...]:
    """All addresses of ``host`` as the system resolver (the one FFmpeg uses) gives them; () when none."""
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port or 0, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError, ValueError):
        return ()
    return tuple(dict.fromkeys(str(info[4][0]).split("%", 1)[0] for info in infos))


def _parse_address(address: str | IPAddress) -> IPAddress:
    if isinstance(address, IPv4Address | IPv6Address):
        return address
    return ip_address(address.split("%", 1)[0])  # drop an IPv6 zone index ("fe80::1%eth0")


def _addresses_within(ip: IPAddress) -> list[IPAddress]:
    """The address and the IPv4 addresses it carries (mapped, NAT64, 6to4, Teredo): each must be allowed."""
    found: list[IPAddress] = [ip]
    if isinstance(ip, IPv6Address):
        embedded = [ip.ipv4_mapped, ip.sixtofour, ip.teredo[1] if ip.teredo else None]
        if ip in _NAT64:
            embedded.append(IPv4Address(int(ip) & 0xFFFFFFFF))
        found += [v4 for v4 in embedded if v4 is not None]
    return found
