"""Link and neighbour state from rtnetlink, and tc BPF attachment.

Queries use pyroute2's IPRoute. Change notifications come from a plain
NETLINK_ROUTE socket decoded by pyroute2's protocol layer (MarshalRtnl): it
can be select()ed with a timeout, where pyroute2 0.9's own monitor buffers
messages out of sight of select().
"""
from __future__ import annotations

import errno
import ipaddress
import select
import socket
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2.netlink.rtnl import RTMGRP_LINK, RTMGRP_NEIGH
from pyroute2.netlink.rtnl.marshal import MarshalRtnl

IFF_LOWER_UP = 0x10000
TC_INGRESS, TC_EGRESS = "ffff:fff2", "ffff:fff3"  # clsact parents
# Neighbour states whose MAC can be used (ndmsg NUD_*): REACHABLE, STALE,
# DELAY, PROBE, PERMANENT. INCOMPLETE and FAILED carry none.
NUD_USABLE = 0x02 | 0x04 | 0x08 | 0x10 | 0x80


@dataclass(frozen=True)
class LinkChange:
    ifindex: int
    carrier: bool


@dataclass(frozen=True)
class NeighbourChange:
    ifindex: int
    ip: ipaddress.IPv4Address
    mac: str | None      # None: entry gone or unresolved


def ifindex(ipr: IPRoute, dev: str) -> int:
    found = ipr.link_lookup(ifname=dev)
    if not found:
        raise LookupError(f"interface {dev!r} does not exist in this network namespace")
    return found[0]


def link_info(ipr: IPRoute, dev: str) -> tuple[int, str, bool]:
    """(ifindex, MAC, carrier) of `dev`."""
    (msg,) = ipr.get_links(ifindex(ipr, dev))
    return msg["index"], msg.get_attr("IFLA_ADDRESS"), bool(msg["flags"] & IFF_LOWER_UP)


def attach_bpf(ipr: IPRoute, dev: str, parent: str, prog, prio: int) -> int:
    """Puts a BCC-loaded program on dev's clsact hook as a direct-action
    filter of priority `prio`; returns dev's ifindex. `replace` lets a
    restarted loader take over its predecessor's filter in one netlink
    operation, with no moment without a program."""
    idx = ifindex(ipr, dev)
    try:
        ipr.tc("add", "clsact", idx)
    except Exception as e:  # an existing clsact (ours or another tool's) is fine
        if getattr(e, "code", None) != errno.EEXIST:
            raise
    name = prog.name.decode() if isinstance(prog.name, bytes) else prog.name
    ipr.tc("replace-filter", "bpf", idx, ":1", fd=prog.fd, name=name,
           parent=parent, classid=1, direct_action=True, prio=prio)
    return idx


def detach_bpf(ipr: IPRoute, idx: int, parent: str, prio: int) -> None:
    """Removes the filter attach_bpf() put there; gone already is fine."""
    try:
        ipr.tc("del-filter", "bpf", idx, ":1", parent=parent, prio=prio)
    except Exception as e:
        if getattr(e, "code", None) not in (errno.ENOENT, errno.ENODEV, errno.EINVAL):
            raise


def neighbour_mac(ipr: IPRoute, ifindex: int, ip: ipaddress.IPv4Address) -> str | None:
    for msg in ipr.get_neighbours(ifindex=ifindex, family=socket.AF_INET):
        if msg.get_attr("NDA_DST") == str(ip) and msg["state"] & NUD_USABLE:
            return msg.get_attr("NDA_LLADDR")
    return None


class Monitor:
    """Carrier and neighbour changes, as they happen."""

    def __init__(self):
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self._sock.bind((0, RTMGRP_LINK | RTMGRP_NEIGH))
        self._marshal = MarshalRtnl()

    def read(self, timeout_s: float) -> list[LinkChange | NeighbourChange]:
        if not select.select([self._sock], [], [], timeout_s)[0]:
            return []
        changes: list[LinkChange | NeighbourChange] = []
        for msg in self._marshal.parse(self._sock.recv(1 << 16)):
            event = msg["event"]
            if event == "RTM_NEWLINK":
                changes.append(LinkChange(msg["index"], bool(msg["flags"] & IFF_LOWER_UP)))
            elif event in ("RTM_NEWNEIGH", "RTM_DELNEIGH") and msg["family"] == socket.AF_INET:
                usable = event == "RTM_NEWNEIGH" and msg["state"] & NUD_USABLE
                changes.append(NeighbourChange(msg["ifindex"], ipaddress.IPv4Address(msg.get_attr("NDA_DST")),
                                               msg.get_attr("NDA_LLADDR") if usable else None))
        return changes

    def close(self) -> None:
        self._sock.close()


XDP_ATTACHED_NATIVE = "xdp"  # IFLA_XDP_ATTACHED = XDP_ATTACHED_DRV, as pyroute2 names it


def attach_xdp(ipr: IPRoute, dev: str, prog) -> int:
    """Attaches `prog` to dev in native (driver) mode, replacing any program
    there; returns dev's ifindex. Refuses generic mode: it runs after the
    skb is built and would cost more than the kernel path it bypasses."""
    idx = ifindex(ipr, dev)
    ipr.link("set", index=idx, xdp_fd=prog.fd)
    xdp = ipr.get_links(idx)[0].get_attr("IFLA_XDP")
    mode = xdp.get_attr("IFLA_XDP_ATTACHED") if xdp else None
    if mode != XDP_ATTACHED_NATIVE:
        detach_xdp(ipr, idx)
        raise OSError(f"{dev}: XDP attached in mode {mode}, not native")
    return idx


def detach_xdp(ipr: IPRoute, idx: int) -> None:
    ipr.link("set", index=idx, xdp_fd=-1)
