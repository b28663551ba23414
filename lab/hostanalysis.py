"""Host failover seen from the exchange: which gateway of an HA pair each
order came through, and whether both ever forwarded at once.

Pure (numpy only): the input is one udp-recv capture at exch (lab.traffic's
ARRIVAL_DTYPE) and the map from exch's handoff ifindexes to the gateway
behind each (lab.pair.exch_gateways).
"""
from __future__ import annotations

import numpy as np

from lab.traffic import NO_SENT_NS, analyze_stream


def analyze_host(arrivals: np.ndarray, sent: int, fault_ns: int, gateway_of: dict[int, str], active: str,
                 episode_gap_ns: int = 10_000_000) -> dict:
    """What one order stream saw of a fault on the active gateway.

    sent: the sender's "issued" (see analyze_stream). gateway_of: exch
    ifindex -> gateway name; an arrival on any other ifindex is an error, not
    a guess. active: the gateway that was active when the fault came.

    took_over: an order sent at or after fault_ns (by the intended send time
    it carries) arrived through a gateway other than `active`; takeover_us:
    the first such arrival's time minus fault_ns (None without one);
    outage_us: that first arrival minus the last arrival through `active`
    before it: the gap in orders the exchange itself saw across the
    takeover, on its own clock (independent of when the lab stamped the
    fault). takeover_order_delay_us: that order's arrival minus its intended send
    time. It is the path's latency, tens of µs, unless the sender itself was
    held off the CPU: then takeover_us measures the stall, not the takeover.
    via: arrivals per gateway (every gateway of gateway_of, duplicates
    included). switches: changes of gateway between consecutive orders in
    send order.

    dual_active_us, the time both gateways forwarded orders, judged only by
    the gateway each order came through: order the arrivals by their send
    time (sent_ns, then seq); find each change of gateway between
    consecutive orders, stamped with the send time of the order after it;
    group changes less than episode_gap_ns apart (in send time) into
    episodes. An episode of one change is a clean handover and counts 0. An
    episode of several changes means orders sent at the same time went
    through both gateways: it counts the send time from its first change to
    its last. dual_active_us is the sum over episodes; dual_active_episodes
    how many episodes counted. A preemption (a switch, and a switch back
    seconds later) is two clean handovers: 0.
    """
    if active not in gateway_of.values():
        raise ValueError(f"active gateway {active!r} is none of {sorted(set(gateway_of.values()))}")
    ifindex = np.asarray(arrivals["ifindex"], dtype=np.int64)
    known = np.array(sorted(gateway_of), dtype=np.int64)
    unknown = ~np.isin(ifindex, known)
    if unknown.any():
        strays = np.unique(ifindex[unknown])
        raise ValueError(f"{int(unknown.sum())} arrivals on ifindex {', '.join(map(str, strays))}, which is no "
                         f"gateway's handoff (known: {dict(sorted(gateway_of.items()))})")
    sent_ns = np.asarray(arrivals["sent_ns"], dtype=np.int64)
    if (sent_ns == NO_SENT_NS).any():
        raise ValueError(f"{int((sent_ns == NO_SENT_NS).sum())} arrivals carry no send time: "
                         "episodes are measured in send time")
    names = sorted(set(gateway_of.values()))
    # Each arrival's gateway as an index into names.
    gw = np.array([names.index(gateway_of[int(i)]) for i in known], dtype=np.int64)[np.searchsorted(known, ifindex)]
    t_ns = np.asarray(arrivals["t_ns"], dtype=np.int64)

    stream = analyze_stream(arrivals, sent)
    taken = (gw != names.index(active)) & (sent_ns >= fault_ns)
    takeover_us = delay_us = outage_us = None
    if taken.any():
        first = np.flatnonzero(taken)[np.argmin(t_ns[taken])]
        takeover_us = round((int(t_ns[first]) - fault_ns) / 1000, 1)
        delay_us = round((int(t_ns[first]) - int(sent_ns[first])) / 1000, 1)
        before = (gw == names.index(active)) & (t_ns < t_ns[first])
        if before.any():
            outage_us = round((int(t_ns[first]) - int(t_ns[before].max())) / 1000, 1)

    order = np.lexsort((np.asarray(arrivals["seq"], dtype=np.uint64), sent_ns))
    in_send_order = gw[order]
    change_ns = sent_ns[order][1:][in_send_order[1:] != in_send_order[:-1]]
    dual_ns = episodes = 0
    if len(change_ns):
        starts = np.concatenate(([0], np.flatnonzero(np.diff(change_ns) >= episode_gap_ns) + 1))
        ends = np.concatenate((starts[1:], [len(change_ns)])) - 1
        several = ends > starts
        dual_ns = int((change_ns[ends] - change_ns[starts])[several].sum())
        episodes = int(several.sum())

    return {
        "took_over": bool(taken.any()),
        "takeover_us": takeover_us,
        "takeover_order_delay_us": delay_us,
        "outage_us": outage_us,
        "sent": stream["sent"], "received": stream["received"], "lost": stream["lost"],
        "duplicated": stream["duplicated"], "reordered": stream["reordered"],
        "lost_ranges": stream["lost_seqs_ranges"],
        "via": {name: int((gw == i).sum()) for i, name in enumerate(names)},
        "switches": len(change_ns),
        "dual_active_us": round(dual_ns / 1000, 1),
        "dual_active_episodes": episodes,
    }
