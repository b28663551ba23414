"""The HA pair's virtual gateway address on the trader-facing interface.

The active adds it and announces it with gratuitous ARP (a request and a
reply, each with sender = target = the VIP), which makes every host on the
LAN that already has a neighbour entry for the VIP point it at this MAC at
once: Linux overrides an entry for a gratuitous ARP even inside its
locktime. A standby removes the address, so its kernel never answers an ARP
request for it. IPv4 only, as the rest of the data path.
"""
from __future__ import annotations

import errno
import ipaddress
import socket
import struct
import threading

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

ETH_P_ARP = 0x0806
BROADCAST = b"\xff" * 6
# Announced again after these delays: a LAN that dropped the first frames
# still moves (RFC 5227 announces twice; keepalived repeats too).
REPEAT_S = (0.05, 0.5)


def garp_frames(mac: str, addr: ipaddress.IPv4Address) -> list[bytes]:
    """A gratuitous ARP request and reply for addr at mac, broadcast."""
    hw = bytes.fromhex(mac.replace(":", ""))
    ip = addr.packed
    frames = []
    for op, target_hw in ((1, b"\x00" * 6), (2, hw)):   # a gratuitous reply names its own MAC as target
        arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, op, hw, ip, target_hw, ip)
        frames.append(BROADCAST + hw + struct.pack("!H", ETH_P_ARP) + arp)
    return frames


class Vip:
    def __init__(self, ifname: str, ifindex: int, mac: str, iface: ipaddress.IPv4Interface):
        self.ifname, self.ifindex, self.mac, self.iface = ifname, ifindex, mac, iface
        self._frames = garp_frames(mac, iface.ip)
        self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
        self._sock.bind((ifname, ETH_P_ARP))
        self._claimed = threading.Event()
        self._timers: list[threading.Timer] = []

    def announce(self) -> None:
        for frame in self._frames:
            self._sock.send(frame)

    def claim(self, ipr: IPRoute) -> None:
        """Announce first (the trader moves now), then own the address (the
        kernel answers later ARP requests for it), then announce again."""
        self._claimed.set()
        self.announce()
        try:
            ipr.addr("add", index=self.ifindex, address=str(self.iface.ip), prefixlen=self.iface.network.prefixlen)
        except NetlinkError as e:
            if e.code != errno.EEXIST:
                raise
        self._cancel()
        self._timers = [threading.Timer(delay, self._repeat) for delay in REPEAT_S]
        for t in self._timers:
            t.daemon = True
            t.start()

    def _repeat(self) -> None:
        if self._claimed.is_set():
            try:
                self.announce()
            except OSError:
                pass   # the interface went away; the next claim announces again

    def release(self, ipr: IPRoute) -> None:
        self._claimed.clear()
        self._cancel()
        remove(ipr, self.ifindex, self.iface)

    def present(self, ipr: IPRoute) -> bool:
        return any(a.get_attr("IFA_ADDRESS") == str(self.iface.ip)
                   for a in ipr.get_addr(index=self.ifindex, family=socket.AF_INET))

    def _cancel(self) -> None:
        for t in self._timers:
            t.cancel()
        self._timers = []

    def close(self) -> None:
        self._cancel()
        self._sock.close()


def remove(ipr: IPRoute, ifindex: int, iface: ipaddress.IPv4Interface) -> bool:
    """Deletes the address if present; whether it was."""
    try:
        ipr.addr("del", index=ifindex, address=str(iface.ip), prefixlen=iface.network.prefixlen)
        return True
    except NetlinkError as e:
        if e.code in (errno.EADDRNOTAVAIL, errno.ENOENT, errno.ESRCH):
            return False
        raise
