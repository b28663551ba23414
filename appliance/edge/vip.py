"""The HA pair's virtual gateway address on the trader-facing interface.

The active announces it with gratuitous ARP (a request and a reply, each
with sender = target = the VIP), which makes every host on the LAN that
already has a neighbour entry for the VIP point it at this MAC at once:
Linux overrides an entry for a gratuitous ARP even inside its locktime.
It also adds the address, so that its kernel answers later ARP requests;
a standby removes it, so its kernel never does. Adding or removing an
address takes a netlink round trip of one to several milliseconds, so it
runs on a thread of its own, in order, after the announcement: a takeover
waits only for the announcement. IPv4 only, as the rest of the data path.
"""
from __future__ import annotations

import ctypes
import errno
import ipaddress
import os
import queue
import socket
import struct
import threading
import time
from collections.abc import Callable

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

ETH_P_ARP = 0x0806
MSG_DONTWAIT = 0x40

# send(2) without handing the GIL over: a takeover's announcement goes out
# on the pair thread, which would otherwise wait for the GIL behind another
# thread after each frame. MSG_DONTWAIT: it never blocks holding the GIL.
_LIBC = ctypes.PyDLL(None, use_errno=True)
_SEND_KEEPING_GIL = _LIBC.send
_SEND_KEEPING_GIL.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_int]
_SEND_KEEPING_GIL.restype = ctypes.c_ssize_t
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
    def __init__(self, ifname: str, ifindex: int, mac: str, iface: ipaddress.IPv4Interface,
                 on_error: Callable[[str], None]):
        """on_error(message): an address change failed (logged by the caller)."""
        self.ifname, self.ifindex, self.mac, self.iface = ifname, ifindex, mac, iface
        self._frames = garp_frames(mac, iface.ip)
        self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
        self._sock.bind((ifname, ETH_P_ARP))
        self._on_error = on_error
        self._changes: queue.SimpleQueue = queue.SimpleQueue()
        self._worker = threading.Thread(target=self._apply_changes, name="vip", daemon=True)
        self._worker.start()

    def announce(self) -> None:
        fd = self._sock.fileno()
        for frame in self._frames:
            if _SEND_KEEPING_GIL(fd, frame, len(frame), MSG_DONTWAIT) < 0:
                err = ctypes.get_errno()
                raise OSError(err, f"gratuitous ARP on {self.ifname}: {os.strerror(err)}")

    def claim(self) -> None:
        """Announce now (the trader moves); the worker then owns the address
        (its kernel answers later ARP requests) and announces again."""
        self.announce()
        self._changes.put(True)

    def release(self) -> None:
        self._changes.put(False)

    def settle(self, timeout_s: float = 5.0) -> None:
        """Returns once every claim and release so far reached the kernel."""
        done = threading.Event()
        self._changes.put(done)
        done.wait(timeout_s)

    def _apply_changes(self) -> None:
        repeats: list[float] = []   # monotonic times of the claim's next announcements
        with IPRoute() as ipr:
            while True:
                try:
                    change = self._changes.get(timeout=max(0.0, repeats[0] - time.monotonic()) if repeats else None)
                except queue.Empty:
                    repeats.pop(0)
                    self._announce_again()
                    continue
                if change is None:
                    return
                if isinstance(change, threading.Event):
                    change.set()
                    continue
                now = time.monotonic()
                repeats = [now + delay for delay in REPEAT_S] if change else []
                try:
                    if change:
                        add(ipr, self.ifindex, self.iface)
                    else:
                        remove(ipr, self.ifindex, self.iface)
                except (NetlinkError, OSError) as e:
                    self._on_error(f"{'adding' if change else 'removing'} {self.iface} on {self.ifname}: {e}")

    def _announce_again(self) -> None:
        try:
            self.announce()
        except OSError as e:
            self._on_error(f"announcing {self.iface.ip} on {self.ifname}: {e}")

    def close(self) -> None:
        """After the claims and releases so far are applied."""
        self._changes.put(None)
        self._worker.join(timeout=5.0)
        self._sock.close()


def add(ipr: IPRoute, ifindex: int, iface: ipaddress.IPv4Interface) -> None:
    try:
        ipr.addr("add", index=ifindex, address=str(iface.ip), prefixlen=iface.network.prefixlen)
    except NetlinkError as e:
        if e.code != errno.EEXIST:
            raise


def remove(ipr: IPRoute, ifindex: int, iface: ipaddress.IPv4Interface) -> bool:
    """Deletes the address if present; whether it was."""
    try:
        ipr.addr("del", index=ifindex, address=str(iface.ip), prefixlen=iface.network.prefixlen)
        return True
    except NetlinkError as e:
        if e.code in (errno.EADDRNOTAVAIL, errno.ENOENT, errno.ESRCH):
            return False
        raise
