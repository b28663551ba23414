"""The netdev family's device notifications, decoded without a kernel: which
devices take XDP frames (appliance.edge.netlink._xdp_changes)."""
from appliance.edge import netlink


def _notification(cmd: int, ifindex: int, features: int | None) -> bytes:
    msg = netlink._netdevmsg()
    msg["header"]["type"] = 0x20   # the family id: any, the decoder reads only the command
    msg["cmd"], msg["version"] = cmd, 1
    msg["attrs"] = [("NETDEV_A_DEV_IFINDEX", ifindex)] + \
        ([("NETDEV_A_DEV_XDP_FEATURES", features)] if features is not None else [])
    msg.encode()
    return bytes(msg.data)


def test_one_read_of_several_notifications_gives_each_devices_ndo_xmit_bit():
    takes = netlink.NETDEV_XDP_ACT_NDO_XMIT | 0x23    # BASIC | REDIRECT | RX_SG too
    data = (_notification(netlink.NETDEV_CMD_DEV_CHANGE_NTF, 7, takes)
            + _notification(netlink.NETDEV_CMD_DEV_CHANGE_NTF, 8, 0x23)
            + _notification(netlink.NETDEV_CMD_DEV_ADD_NTF, 9, takes))
    assert netlink._xdp_changes(data) == [netlink.XdpChange(7, True), netlink.XdpChange(8, False),
                                          netlink.XdpChange(9, True)]


def test_a_device_gone_takes_no_frames_and_other_commands_are_ignored():
    data = (_notification(netlink.NETDEV_CMD_DEV_DEL_NTF, 7, netlink.NETDEV_XDP_ACT_NDO_XMIT)
            + _notification(netlink.NETDEV_CMD_DEV_GET, 8, netlink.NETDEV_XDP_ACT_NDO_XMIT)
            + _notification(netlink.NETDEV_CMD_DEV_CHANGE_NTF, 9, None))
    assert netlink._xdp_changes(data) == [netlink.XdpChange(7, False), netlink.XdpChange(9, False)]


def test_a_truncated_read_stops_at_the_last_whole_message():
    whole = _notification(netlink.NETDEV_CMD_DEV_CHANGE_NTF, 7, netlink.NETDEV_XDP_ACT_NDO_XMIT)
    for cut in (10, 20):
        assert netlink._xdp_changes(whole + whole[:cut]) == [netlink.XdpChange(7, True)]
