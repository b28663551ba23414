"""`twinpath status` as text: one table per links, classes and feeds, from
the status document the daemon answers with (appliance.edge.control).
Unknown values (None, or absent) show as "-"; a section with no entries is
left out."""
from __future__ import annotations

from typing import Any

UNKNOWN = "-"


def render(status: dict[str, Any]) -> str:
    sections = [_daemon(status.get("daemon") or {})]
    if status.get("pair"):
        sections.append(_pair(status["pair"]))
    if status.get("links"):
        sections.append(_links(status["links"]))
    if status.get("classes"):
        sections.append(_classes(status["classes"]))
    if status.get("feeds"):
        sections.append(_feeds(status["feeds"]))
    return "\n\n".join(sections)


def _daemon(d: dict[str, Any]) -> str:
    interval, multiplier = d.get("interval_us"), d.get("multiplier")
    heartbeat = f"{interval} us x {multiplier}" if interval is not None and multiplier is not None else UNKNOWN
    r = d.get("readings") or {}
    pace = f"reads links every {_text(r.get('every_ms'))} ms ({_text(r.get('pace'))}), " \
           f"{_text(r.get('kernel_wakes'))} kernel wakes" if r else ""
    return (f"twinpath {_text(d.get('version'))} daemon pid {_text(d.get('pid'))}, up {_duration(d.get('uptime_s'))}, "
            f"config {_text(d.get('config'))}, heartbeat {heartbeat}, pins {_text(d.get('pin_dir'))}"
            + (f"\n  {pace}" if pace else ""))


def _pair(p: dict[str, Any]) -> str:
    w, gate = p.get("witness") or {}, p.get("gate") or {}
    paths = ", ".join(f"{name} {state}{_heard(p, name)}" for name, state in (p.get("peer_paths") or {}).items())
    peer_state = w.get("peer_state")
    return "\n".join([
        f"pair: {_text(p.get('node'))} is {_text(p.get('role')).upper()}, token {_text(p.get('token'))}, "
        f"vip {_text(p.get('vip'))}; gate {_text(gate.get('mode'))} (fenced {_si(gate.get('fenced_packets'))} packets)",
        f"  peer {_text(p.get('peer'))}: {'DEAD on every path' if p.get('peer_dead') else 'alive'} ({paths or UNKNOWN})"
        f"; published {'-' if peer_state is None else peer_state}",
        f"  witness: {'reachable' if w.get('reachable') else 'UNREACHABLE'}, owner {_text(w.get('owner'))}, "
        f"token {_text(w.get('token'))}",
        f"  this gateway: lan {_flag(p.get('lan'), 'ok', 'LOST')}, order links {_flag(p.get('links'), 'ok', 'LOST')}"
        + (f"; {p['pending'][0]} ({p['pending'][1]}) in flight" if p.get("pending") else "")
        + ("; took over on the data path's evidence, the witness has not confirmed yet"
           if p.get("role") == "active" and p.get("confirmed") is False else "")
        + ("; held standby (force-active to release)" if p.get("hold_standby") else "")
        + ("; gate still open after its hand-over (draining)" if p.get("draining") else "")])


def _heard(p: dict[str, Any], path: str) -> str:
    """' (heard 3.1 ms ago, 3 unanswered)': what a path's verdict rests on."""
    heard_us = (p.get("peer_heard_us") or {}).get(path)
    unanswered = (p.get("peer_unanswered") or {}).get(path)
    if heard_us is None and unanswered is None:
        return ""
    heard = "never heard" if heard_us is None else f"heard {heard_us / 1000:.1f} ms ago"
    return f" ({heard}, {unanswered} unanswered)" if unanswered else f" ({heard})"


def _links(links: dict[str, dict[str, Any]]) -> str:
    rows = [[name, _text(l.get("state")), _number(l.get("rtt_p50_us")), _number(l.get("rtt_p99_us")),
             _number(l.get("rtt_max_us")), _percent(l.get("loss"), 100, 2),
             _number(l.get("heartbeat_age_ms"), 1), _flag(l.get("carrier"), "up", "down"),
             _flag(l.get("drained"), "yes", "no"), ", ".join(l.get("reasons") or []) or UNKNOWN]
            for name, l in links.items()]
    return _table(["link", "state", "rtt p50 us", "p99 us", "max us", "loss", "heartbeat age ms", "carrier",
                   "drained", "reasons"], rows, right={2, 3, 4, 5, 6})


def _classes(classes: dict[str, dict[str, Any]]) -> str:
    # A class the core keeps on a gray link, no standby relieving it
    # (gray-held in the log), says so beside its link.
    rows = [[name, _text(c.get("link")) + (" (gray-held)" if c.get("gray_held") else ""),
             _text(c.get("policy")), _text(c.get("preferred")),
             _text(c.get("forced")), _text(c.get("failovers")), _text(c.get("last_cause")),
             _ago(c.get("last_failover_age_s")), _si(c.get("packets")), _si(c.get("bytes"), "B")]
            for name, c in classes.items()]
    return _table(["class", "link", "policy", "preferred", "forced", "failovers", "last cause", "last failover",
                   "packets", "bytes"], rows, right={5, 8, 9})


def _feeds(feeds: dict[str, dict[str, Any]]) -> str:
    lines = sorted({line for f in feeds.values() for line in [*(f.get("won_pct") or {}), *(f.get("lines") or {})]})
    rows = [[name,
             *(_percent((f.get("won_pct") or {}).get(line), 1, 1) for line in lines),
             _text(f.get("gaps")), _text(f.get("lost")),
             *(_text((f.get("lines") or {}).get(line)) for line in lines)]
            for name, f in feeds.items()]
    return _table(["feed", *(f"won {line}" for line in lines), "gaps", "lost", *(f"line {line}" for line in lines)],
                  rows, right=set(range(1, len(lines) + 3)))


def _table(headers: list[str], rows: list[list[str]], right: set[int]) -> str:
    """Columns as wide as their widest cell, two spaces apart; numbers
    (the `right` columns) right-aligned so their digits line up."""
    widths = [max(len(cells[i]) for cells in [headers, *rows]) for i in range(len(headers))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    return "\n".join(line(cells) for cells in [headers, *rows])


def _text(value: Any) -> str:
    return UNKNOWN if value is None else str(value)


def _number(value: float | None, decimals: int = 0) -> str:
    return UNKNOWN if value is None else f"{value:.{decimals}f}"


def _percent(value: float | None, scale: float, decimals: int) -> str:
    return UNKNOWN if value is None else f"{value * scale:.{decimals}f}%"


def _flag(value: bool | None, yes: str, no: str) -> str:
    return UNKNOWN if value is None else yes if value else no


def _si(value: int | None, unit: str = "") -> str:
    """12345678 -> "12.3M": counters stay readable at a glance (--json has them exact)."""
    if value is None:
        return UNKNOWN
    for prefix, size in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= size:
            return f"{value / size:.1f}{prefix}{unit}"
    return f"{value}{unit}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return UNKNOWN
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _ago(seconds: float | None) -> str:
    return UNKNOWN if seconds is None else f"{_duration(seconds)} ago"
