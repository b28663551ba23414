"""Checks of a configuration against this host, before anything is attached.

appliance.core.config checks what a file can say on its own; this module checks
what only the running gateway can answer: do the devices exist in this
network namespace, does each link device have an IPv4 address, is a heartbeat
target or next hop really another host on that link (not one of this
gateway's own addresses, not the network or broadcast address of the link's
subnet), is a ttl_security target directly connected, and is the key file
usable. Every problem is reported at once, each naming the config file, the
key path and the reason.
"""
from __future__ import annotations

import ipaddress
import socket

from pyroute2 import IPRoute

from appliance.core.config import Config, ConfigError
from appliance.edge.keys import HeartbeatKey, keys_for
from appliance.edge.netlink import source_address


def _addresses(ipr: IPRoute) -> dict[int, list[ipaddress.IPv4Interface]]:
    """Every IPv4 address of this namespace, by ifindex."""
    found: dict[int, list[ipaddress.IPv4Interface]] = {}
    for msg in ipr.get_addr(family=socket.AF_INET):
        local = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
        if local:
            found.setdefault(msg["index"], []).append(ipaddress.IPv4Interface(f"{local}/{msg['prefixlen']}"))
    return found


def _devices(ipr: IPRoute) -> dict[str, int]:
    return {msg.get_attr("IFLA_IFNAME"): msg["index"] for msg in ipr.get_links()}


def problems(cfg: Config, ipr: IPRoute) -> tuple[list[tuple[str, str]], list[HeartbeatKey]]:
    """(key path, reason) for everything about `cfg` this host contradicts,
    and the heartbeat keys it will run with."""
    found: list[tuple[str, str]] = []
    devices = _devices(ipr)
    addresses = _addresses(ipr)
    own = {iface.ip: name for name, idx in devices.items() for iface in addresses.get(idx, [])}

    if cfg.steer.ingress not in devices:
        found.append(("steer.ingress", f"interface {cfg.steer.ingress!r} does not exist in this network namespace"))
    for i, link in enumerate(cfg.links):
        if link.dev not in devices:
            found.append((f"links.{i}.dev", f"interface {link.dev!r} does not exist in this network namespace"))
            subnets = []
        else:
            subnets = addresses.get(devices[link.dev], [])
            if not subnets:
                found.append((f"links.{i}.dev", f"interface {link.dev!r} has no IPv4 address: "
                                                f"heartbeats need a source address on the link"))
        for key, addr in (("target", link.target), ("nexthop", link.nexthop)):
            if addr is None:
                continue
            where = f"links.{i}.{key}"
            if addr in own:
                found.append((where, f"{addr} is this gateway's own address (on {own[addr]}): "
                                     f"a probe to it never leaves this host"))
                continue
            for iface in subnets:
                net = iface.network
                if net.prefixlen > 30:   # /31 (RFC 3021) and /32 have no network or broadcast address
                    continue
                if addr == net.network_address:
                    found.append((where, f"{addr} is the network address of {link.dev}'s subnet {net}, not a host"))
                elif addr == net.broadcast_address:
                    found.append((where, f"{addr} is the broadcast address of {link.dev}'s subnet {net}, "
                                         f"not a host"))
        if subnets and link.target not in own:
            try:
                source_address(ipr, devices[link.dev], link.target)
            except LookupError as e:
                found.append((f"links.{i}.target", f"probes cannot leave {link.dev} for it: {e}"))
        if link.ttl_security and subnets and not any(link.target in iface.network for iface in subnets):
            found.append((f"links.{i}.ttl_security",
                          f"target {link.target} is not in a subnet of {link.dev} "
                          f"({', '.join(str(s.network) for s in subnets)}): TTL 255 replies need a directly "
                          f"connected target"))

    keys: list[HeartbeatKey] = []
    try:
        keys = keys_for(cfg)
    except ConfigError as e:
        found.append(("heartbeat.key_file", str(e)))
    return found, keys


def check(cfg: Config, ipr: IPRoute, source: str | None = None) -> list[HeartbeatKey]:
    """Raises ConfigError listing every problem found, one per line as
    `FILE: KEY.PATH: reason`; if this gateway can run `cfg`, returns the
    heartbeat keys to run with. Changes nothing."""
    source = source or cfg.source
    found, keys = problems(cfg, ipr)
    if found:
        raise ConfigError("\n".join(f"{source}: {where}: {reason}" for where, reason in found))
    return keys
