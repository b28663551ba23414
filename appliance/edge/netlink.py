"""Link and neighbour state from rtnetlink, which devices take XDP
redirects (the netdev generic-netlink family), and tc BPF attachment.

Queries use pyroute2's IPRoute. Change notifications come from a plain
NETLINK_ROUTE socket decoded by pyroute2's protocol layer (MarshalRtnl): it
can be select()ed with a timeout, where pyroute2 0.9's own monitor buffers
messages out of sight of select().

Ownership: attach_bpf() and attach_xdp() return an `Attached` ifindex that
remembers the kernel id of the program they put there, and detach_bpf() /
detach_xdp() remove a filter or XDP program only while it is still that
program. A program another daemon or tool has since put in its place is left
alone (logged, and the detach returns False).
"""
from __future__ import annotations

import errno
import ipaddress
import logging
import os
import select
import socket
import struct
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2.netlink import NLM_F_REQUEST, genlmsg
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.generic import GenericNetlinkSocket
from pyroute2.netlink.rtnl import RTMGRP_LINK, RTMGRP_NEIGH
from pyroute2.netlink.rtnl.marshal import MarshalRtnl

log = logging.getLogger(__name__)

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


@dataclass(frozen=True)
class XdpChange:
    ifindex: int
    redirect_target: bool   # the device takes XDP redirects now


# linux/netdev.h (Linux 6.3+): a device's xdp_features, and the bit that says
# the kernel hands it redirected XDP frames. Without it, xdp_do_redirect()
# drops them; a veth has it only while its peer runs XDP or GRO.
NETDEV_FAMILY = "netdev"
NETDEV_CMD_DEV_GET, NETDEV_CMD_DEV_ADD_NTF, NETDEV_CMD_DEV_DEL_NTF, NETDEV_CMD_DEV_CHANGE_NTF = 1, 2, 3, 4
NETDEV_XDP_ACT_NDO_XMIT = 1 << 2
NETLINK_GENERIC, NETLINK_ADD_MEMBERSHIP, SOL_NETLINK = 16, 1, 270


class _netdevmsg(genlmsg):
    nla_map = (("NETDEV_A_DEV_UNSPEC", "none"), ("NETDEV_A_DEV_IFINDEX", "uint32"),
               ("NETDEV_A_DEV_PAD", "none"), ("NETDEV_A_DEV_XDP_FEATURES", "uint64"))


class XdpTargets:
    """Asks the kernel whether a device takes XDP redirects now. On a kernel
    without the netdev family (before 6.3) no device does, as far as
    twinpath knows: steering then stays at TC."""

    def __init__(self):
        self._sock: GenericNetlinkSocket | None = GenericNetlinkSocket()
        try:
            self._sock.bind(NETDEV_FAMILY, _netdevmsg)
            self.mgmt_group: int | None = self._sock.mcast_groups["mgmt"]
        except (NetlinkError, KeyError):
            self.close()
            self.mgmt_group = None

    def redirect_target(self, ifindex: int) -> bool:
        if self._sock is None:
            return False
        msg = _netdevmsg()
        msg["cmd"], msg["version"] = NETDEV_CMD_DEV_GET, 1
        msg["attrs"] = [("NETDEV_A_DEV_IFINDEX", ifindex)]
        try:
            (reply,) = self._sock.nlm_request(msg, msg_type=self._sock.prid, msg_flags=NLM_F_REQUEST)
        except NetlinkError as e:
            if e.code in (errno.ENODEV, errno.ENOENT):
                return False
            raise
        return bool((reply.get_attr("NETDEV_A_DEV_XDP_FEATURES") or 0) & NETDEV_XDP_ACT_NDO_XMIT)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def ifindex(ipr: IPRoute, dev: str) -> int:
    found = ipr.link_lookup(ifname=dev)
    if not found:
        raise LookupError(f"interface {dev!r} does not exist in this network namespace")
    return found[0]


def link_info(ipr: IPRoute, dev: str) -> tuple[int, str, bool]:
    """(ifindex, MAC, carrier) of `dev`."""
    (msg,) = ipr.get_links(ifindex(ipr, dev))
    return msg["index"], msg.get_attr("IFLA_ADDRESS"), bool(msg["flags"] & IFF_LOWER_UP)


class Attached(int):
    """The ifindex a program was attached to, remembering the kernel id of
    that program (`prog_id`) so that detach removes only it. An int, so
    callers that keep ifindexes keep working."""

    prog_id: int
    created_qdisc: bool   # attach_bpf added the clsact qdisc (it was not there)

    def __new__(cls, ifindex: int, prog_id: int, created_qdisc: bool = False):
        self = super().__new__(cls, ifindex)
        self.prog_id = prog_id
        self.created_qdisc = created_qdisc
        return self

    def __repr__(self) -> str:
        return f"Attached(ifindex={int(self)}, prog_id={self.prog_id}, created_qdisc={self.created_qdisc})"


TC_HANDLE = 1         # our filters' handle (":1") within their priority
TCA_BPF_ID = 11       # linux/pkt_cls.h; pyroute2 0.9 leaves it undecoded ("UNKNOWN")
NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED / NLA_F_NET_BYTEORDER


def _prog_id_of(prog) -> int:
    from appliance.edge import bpfsys  # libbpf only where programs are attached
    return bpfsys.prog_id(prog.fd)


def attach_bpf(ipr: IPRoute, dev: str, parent: str, prog, prio: int) -> Attached:
    """Puts a BCC-loaded program on dev's clsact hook as a direct-action
    filter of priority `prio`; returns dev's ifindex, carrying the program's
    id for detach_bpf(). `replace` lets a restarted loader take over its
    predecessor's filter in one netlink operation, with no moment without a
    program."""
    idx = ifindex(ipr, dev)
    created = True
    try:
        ipr.tc("add", "clsact", idx)
    except Exception as e:  # an existing clsact (ours or another tool's) is fine
        if getattr(e, "code", None) != errno.EEXIST:
            raise
        created = False
    name = prog.name.decode() if isinstance(prog.name, bytes) else prog.name
    ipr.tc("replace-filter", "bpf", idx, f":{TC_HANDLE}", fd=prog.fd, name=name,
           parent=parent, classid=1, direct_action=True, prio=prio)
    return Attached(idx, _prog_id_of(prog), created)


def remove_clsact_if_empty(ipr: IPRoute, idx: int) -> bool:
    """Deletes idx's clsact qdisc if no filter is left on it (deleting it
    would remove another tool's filters with it). True if deleted."""
    for parent in (TC_INGRESS, TC_EGRESS):
        try:
            if ipr.get_filters(index=int(idx), parent=parent):
                return False
        except Exception as e:
            if getattr(e, "code", None) in (errno.ENODEV, errno.ENOENT):
                return False
            if getattr(e, "code", None) != errno.EINVAL:
                raise
    try:
        ipr.tc("del", "clsact", int(idx))
    except Exception as e:
        if getattr(e, "code", None) in (errno.ENOENT, errno.ENODEV, errno.EINVAL):
            return False
        raise
    return True


def _tca_bpf_id(options) -> int | None:
    """TCA_BPF_ID from a cls_bpf filter's TCA_OPTIONS, read from the raw
    attributes (pyroute2 0.9 does not decode it)."""
    data, start, length = options.data, options.offset, options.length
    pos, end = start + 4, min(start + length, len(data))   # skip TCA_OPTIONS' own header
    while pos + 4 <= end:
        nla_len, nla_type = struct.unpack_from("=HH", data, pos)
        if nla_len < 4:
            break
        if nla_type & NLA_TYPE_MASK == TCA_BPF_ID and nla_len >= 8:
            return struct.unpack_from("=I", data, pos + 4)[0]
        pos += (nla_len + 3) & ~3
    return None


def tc_filter_prog_id(ipr: IPRoute, idx: int, parent: str, prio: int, handle: int = TC_HANDLE) -> int | None:
    """The id of the BPF program in the tc filter at idx/parent/prio/handle,
    or None if there is no such filter (or no clsact, or no device)."""
    try:
        filters = ipr.get_filters(index=int(idx), parent=parent)
    except Exception as e:
        if getattr(e, "code", None) in (errno.ENOENT, errno.ENODEV, errno.EINVAL):
            return None
        raise
    for msg in filters:
        if msg["info"] >> 16 != prio or msg["handle"] != handle or msg.get_attr("TCA_KIND") != "bpf":
            continue
        options = msg.get_attr("TCA_OPTIONS")
        return _tca_bpf_id(options) if options is not None else None
    return None


def detach_bpf(ipr: IPRoute, idx: int, parent: str, prio: int, prog_id: int | None = None) -> bool:
    """Removes the filter attach_bpf() put there, if it still holds our
    program (`prog_id`, by default the one `idx` carries from attach_bpf).
    Returns True if it removed it; gone already, or a filter that is not
    ours (another loader replaced it), is left alone and returns False.

    tc has no compare-and-delete: a replacement in the microseconds between
    the check and the delete would still be removed."""
    ours = prog_id if prog_id is not None else getattr(idx, "prog_id", None)
    current = tc_filter_prog_id(ipr, idx, parent, prio)
    if current is None:
        return False
    if current != ours:
        log.warning("tc filter on ifindex %d parent %s prio %#x holds program %s, not ours (%s): left in place",
                    idx, parent, prio, current, ours)
        return False
    try:
        ipr.tc("del-filter", "bpf", int(idx), f":{TC_HANDLE}", parent=parent, prio=prio)
    except Exception as e:
        if getattr(e, "code", None) not in (errno.ENOENT, errno.ENODEV, errno.EINVAL):
            raise
        return False
    return True


def neighbour_mac(ipr: IPRoute, ifindex: int, ip: ipaddress.IPv4Address) -> str | None:
    for msg in ipr.get_neighbours(ifindex=ifindex, family=socket.AF_INET):
        if msg.get_attr("NDA_DST") == str(ip) and msg["state"] & NUD_USABLE:
            return msg.get_attr("NDA_LLADDR")
    return None


def source_address(ipr: IPRoute, ifindex: int, dst: ipaddress.IPv4Address) -> ipaddress.IPv4Address:
    """The address the kernel sends from to `dst` out of `ifindex`."""
    try:
        (route,) = ipr.route("get", dst=str(dst), oif=ifindex)
        src = route.get_attr("RTA_PREFSRC")
    except Exception as e:  # no route out of that device: say which
        raise LookupError(f"no route to {dst} out of interface index {ifindex}: {e}") from None
    if not src:
        raise LookupError(f"the route to {dst} out of interface index {ifindex} has no source address")
    return ipaddress.IPv4Address(src)


class Monitor:
    """Carrier and neighbour changes, and (with `xdp_group`, XdpTargets'
    mgmt_group) changes of whether a device takes XDP redirects, as they
    happen. Subscribed from construction: a query made after it misses none."""

    def __init__(self, xdp_group: int | None = None):
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self._sock.bind((0, RTMGRP_LINK | RTMGRP_NEIGH))
        self._marshal = MarshalRtnl()
        self._genl = None
        if xdp_group is not None:
            self._genl = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_GENERIC)
            self._genl.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            self._genl.bind((0, 0))
            self._genl.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, xdp_group)

    def read(self, timeout_s: float) -> list[LinkChange | NeighbourChange | XdpChange]:
        ready = select.select([s for s in (self._sock, self._genl) if s], [], [], timeout_s)[0]
        changes: list[LinkChange | NeighbourChange | XdpChange] = []
        if self._genl in ready:
            changes += _xdp_changes(self._genl.recv(1 << 16))
        if self._sock not in ready:
            return changes
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
        if self._genl:
            self._genl.close()


def _xdp_changes(data: bytes) -> list[XdpChange]:
    """The netdev family's device notifications in one read."""
    changes, offset = [], 0
    while offset + 16 <= len(data):
        length = struct.unpack_from("=I", data, offset)[0]
        if length < 16 or offset + length > len(data):   # not a whole message: nothing more to trust
            break
        msg = _netdevmsg(data[offset:offset + length])
        msg.decode()
        offset += (length + 3) & ~3
        idx = msg.get_attr("NETDEV_A_DEV_IFINDEX")
        if idx is None or msg["cmd"] not in (NETDEV_CMD_DEV_ADD_NTF, NETDEV_CMD_DEV_DEL_NTF,
                                             NETDEV_CMD_DEV_CHANGE_NTF):
            continue
        features = 0 if msg["cmd"] == NETDEV_CMD_DEV_DEL_NTF else msg.get_attr("NETDEV_A_DEV_XDP_FEATURES") or 0
        changes.append(XdpChange(idx, bool(features & NETDEV_XDP_ACT_NDO_XMIT)))
    return changes


XDP_ATTACHED_NATIVE = "xdp"  # IFLA_XDP_ATTACHED = XDP_ATTACHED_DRV, as pyroute2 names it


XDP_FLAGS_REPLACE = 1 << 4  # linux/if_link.h: detach only if IFLA_XDP_EXPECTED_FD is attached


def attach_xdp(ipr: IPRoute, dev: str, prog) -> Attached:
    """Attaches `prog` to dev in native (driver) mode, replacing any program
    there; returns dev's ifindex, carrying the program's id for
    detach_xdp(). Refuses generic mode: it runs after the skb is built and
    would cost more than the kernel path it bypasses."""
    idx = ifindex(ipr, dev)
    ipr.link("set", index=idx, xdp_fd=prog.fd)
    attached = Attached(idx, _prog_id_of(prog))
    xdp = ipr.get_links(idx)[0].get_attr("IFLA_XDP")
    mode = xdp.get_attr("IFLA_XDP_ATTACHED") if xdp else None
    if mode != XDP_ATTACHED_NATIVE:
        detach_xdp(ipr, attached)
        raise OSError(f"{dev}: XDP attached in mode {mode}, not native")
    return attached


def xdp_prog_id(ipr: IPRoute, idx: int) -> int | None:
    """The id of the native-mode XDP program on idx, or None."""
    try:
        (msg,) = ipr.get_links(int(idx))
    except Exception as e:
        if getattr(e, "code", None) in (errno.ENOENT, errno.ENODEV):
            return None
        raise
    xdp = msg.get_attr("IFLA_XDP")
    if not xdp:
        return None
    return xdp.get_attr("IFLA_XDP_DRV_PROG_ID") or xdp.get_attr("IFLA_XDP_PROG_ID") or None


def detach_xdp(ipr: IPRoute, idx: int, prog_id: int | None = None) -> bool:
    """Removes the XDP program attach_xdp() put on idx, if it is still our
    program (`prog_id`, by default the one `idx` carries from attach_xdp).
    The kernel makes the comparison (XDP_FLAGS_REPLACE with the expected
    program), so a program put there meanwhile by someone else survives.
    Returns True if it removed ours; False if none, or not ours (logged)."""
    from appliance.edge import bpfsys
    ours = prog_id if prog_id is not None else getattr(idx, "prog_id", None)
    current = xdp_prog_id(ipr, idx)
    if current is None:
        return False
    if current != ours:
        log.warning("XDP program on ifindex %d is %s, not ours (%s): left in place", idx, current, ours)
        return False
    try:
        expected = bpfsys.prog_fd_by_id(ours)
    except FileNotFoundError:  # unloaded since the check, so no longer attached
        return False
    try:
        ipr.link("set", index=int(idx), xdp={"attrs": [("IFLA_XDP_FD", -1), ("IFLA_XDP_EXPECTED_FD", expected),
                                                       ("IFLA_XDP_FLAGS", XDP_FLAGS_REPLACE)]})
    except Exception as e:
        code = getattr(e, "code", None)
        if code == errno.EEXIST:  # the kernel found another program there
            log.warning("XDP program on ifindex %d was replaced before detach: left in place", idx)
            return False
        if code in (errno.ENODEV, errno.ENOENT):
            return False
        raise
    finally:
        os.close(expected)
    return True
