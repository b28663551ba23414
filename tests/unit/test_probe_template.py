from appliance import layout

IDENT = 0x7470


def test_probe_template_is_an_echo_request_with_our_identifier_and_probe():
    t = layout.probe_template(link=3, ident=IDENT)
    assert t[0] == 8 and t[1] == 0                         # ICMP echo request
    assert int.from_bytes(t[4:6], "big") == IDENT
    probe = layout.Probe.from_buffer_copy(t[8:])
    assert (probe.magic, probe.version, probe.link, probe.seq, probe.tx_ns) == (
        layout.C["TP_PROBE_MAGIC"], layout.C["TP_PROBE_VERSION"], 3, 0, 0)
    assert layout.PROBE_SEQ_OFFSET == 8 + layout.Probe.seq.offset
