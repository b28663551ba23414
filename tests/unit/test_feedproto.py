"""MoldUDP64 and MDP 3.0 codecs against hand-written bytes (no root)."""
import pytest

from lab.feedproto import (
    Mdp3Message,
    MoldPacket,
    is_lab_message,
    lab_message,
    mdp3_packet,
    mold_end_of_session,
    mold_heartbeat,
    mold_packet,
    parse_mdp3,
    parse_mold,
)

MOLD_DATA = (
    b"NASDAQ1   "                          # session, space-padded to 10
    b"\x01\x02\x03\x04\x05\x06\x07\x08"    # first sequence number, big-endian
    b"\x00\x02"                            # message count
    b"\x00\x03abc"                         # block: length 3
    b"\x00\x01z"                           # block: length 1
)

MDP3_ONE = (
    b"\x04\x03\x02\x01"                    # MsgSeqNum 0x01020304, little-endian
    b"\x08\x07\x06\x05\x04\x03\x02\x01"    # SendingTime 0x0102030405060708
    b"\x0d\x00"                            # msgSize 13 = 2 + 8 + 3
    b"\x03\x00"                            # blockLength 3
    b"\x2e\x00"                            # templateId 46
    b"\x01\x00"                            # schemaId 1
    b"\x09\x00"                            # version 9
    b"xyz"
)


def test_mold_data_packet_bytes_and_round_trip():
    assert mold_packet("NASDAQ1", 0x0102030405060708, [b"abc", b"z"]) == MOLD_DATA
    assert mold_packet(b"NASDAQ1", 0x0102030405060708, [b"abc", b"z"]) == MOLD_DATA
    packet = parse_mold(MOLD_DATA)
    assert packet == MoldPacket("NASDAQ1", 0x0102030405060708, 2, (b"abc", b"z"))
    assert packet.kind == "data"


def test_mold_heartbeat_and_end_of_session():
    heartbeat = mold_heartbeat("S1", 42)
    assert heartbeat == b"S1        " + (42).to_bytes(8, "big") + b"\x00\x00"
    assert parse_mold(heartbeat) == MoldPacket("S1", 42, 0, ())
    assert parse_mold(heartbeat).kind == "heartbeat"
    end = mold_end_of_session("S1", 43)
    assert end == b"S1        " + (43).to_bytes(8, "big") + b"\xff\xff"
    assert parse_mold(end).kind == "end"
    assert parse_mold(end).seq == 43


@pytest.mark.parametrize("cut", range(len(MOLD_DATA)))
def test_mold_truncated_anywhere_is_an_error(cut):
    with pytest.raises(ValueError, match="MoldUDP64"):
        parse_mold(MOLD_DATA[:cut])


@pytest.mark.parametrize("payload, error", [
    (MOLD_DATA + b"!", "1 bytes after the 2 message"),
    (mold_heartbeat("S1", 1) + b"\x00\x01x", "3 bytes after the 0 message"),
    (mold_end_of_session("S1", 1) + b"x", "1 bytes after the 65535 message"),
    (MOLD_DATA[:18] + b"\x00\x03" + MOLD_DATA[20:], "ends before the length of message 3"),
    (b"\xffSESSION  " + MOLD_DATA[10:], "not ASCII"),
])
def test_mold_inconsistent_packets_are_errors(payload, error):
    with pytest.raises(ValueError, match=error):
        parse_mold(payload)


@pytest.mark.parametrize("session", ["", "ELEVENCHARS", "S\u00e9SSION", "S\u4e00", b"S\xff"])
def test_mold_session_must_be_1_to_10_ascii_bytes(session):
    with pytest.raises(ValueError, match="session"):
        mold_heartbeat(session, 1)


def test_mold_data_packet_needs_messages():
    with pytest.raises(ValueError, match="1..65534 messages"):
        mold_packet("S1", 1, [])


def test_mdp3_packet_bytes_and_round_trip():
    assert mdp3_packet(0x01020304, 0x0102030405060708, b"xyz") == MDP3_ONE
    packet = parse_mdp3(MDP3_ONE)
    assert packet.seq == 0x01020304
    assert packet.sending_time_ns == 0x0102030405060708
    assert packet.messages == (Mdp3Message(46, 1, 9, 3, b"xyz"),)


def test_mdp3_several_messages_share_the_packet_seq():
    second = mdp3_packet(0, 0, b"hello", template_id=32)[12:]
    packet = parse_mdp3(MDP3_ONE + second)
    assert packet.seq == 0x01020304
    assert [(m.template_id, m.body) for m in packet.messages] == [(46, b"xyz"), (32, b"hello")]


@pytest.mark.parametrize("cut", range(len(MDP3_ONE)))
def test_mdp3_truncated_anywhere_is_an_error(cut):
    with pytest.raises(ValueError, match="MDP3"):
        parse_mdp3(MDP3_ONE[:cut])


def test_mdp3_msg_size_below_its_header_is_an_error():
    with pytest.raises(ValueError, match="msgSize 9"):
        parse_mdp3(MDP3_ONE[:12] + b"\x09\x00" + MDP3_ONE[14:])


def test_lab_messages_carry_their_seq_in_the_protocols_byte_order():
    assert lab_message("moldudp64", 0x0102, 12) == b"T" + b"\x00" * 6 + b"\x01\x02" + b"\x02" * 3
    assert lab_message("mdp3", 0x0102, 10) == b"\x02\x01" + b"\x00" * 6 + b"\x02" * 2
    with pytest.raises(ValueError, match="at least 9"):
        lab_message("moldudp64", 1, 8)
    with pytest.raises(ValueError, match="at least 8"):
        lab_message("mdp3", 1, 7)


def test_is_lab_message_catches_wrong_seq_and_corrupt_bytes():
    good = lab_message("moldudp64", 7, 20)
    assert is_lab_message("moldudp64", 7, good)
    assert not is_lab_message("moldudp64", 8, good)
    assert not is_lab_message("moldudp64", 7, good[:-1] + b"\x00")
    assert not is_lab_message("mdp3", 7, good)
    assert not is_lab_message("moldudp64", 7, good[:8])
