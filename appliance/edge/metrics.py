"""The Prometheus endpoint (config key metrics.port): what the data path and
the core count, on 127.0.0.1 only.

No BPF here: the daemon builds a Snapshot of its maps and its core on every
scrape, and Collector renders it. The kernel's counters live in its maps, not
in this process, so they are exposed as they are read (custom collector)
rather than mirrored into prometheus_client's own counters.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from appliance import layout
from appliance.core.config import ConfigError

log = logging.getLogger(__name__)

ADDRESS = "127.0.0.1"  # scrapers reach it through a local agent or a tunnel, never the trading networks
# The scalar counters of tp_line_stats, in layout order: the names to read
# with Arbiter.line_counters() for Snapshot.feeds.
ARB_COUNTERS = [name for name, ctype in layout.LineStats._fields_ if ctype is layout.u64]
_RTT_BOUNDS_US = [layout.hist_bucket_bounds_us(b) for b in range(layout.HIST_BUCKETS)]


@dataclass(frozen=True)
class LinkMetrics:
    rtt_buckets: list[int]  # tp_rtt_hist: per-bucket counts (layout.HIST_BUCKETS), since the map was created
    probes_sent: int        # tp_health.probes: stamped on egress, so counted over the same lifetime as replies
    replies: int            # tp_health.replies: accepted
    send_errors: int        # the heartbeat sender's failed sends on this link
    fresh: bool
    carrier: bool
    drained: bool


@dataclass(frozen=True)
class ClassMetrics:
    link: str               # where the class is steered now
    links: list[str]        # its configured links, preferred first
    packets: dict[str, int]  # per link, tp_steer_stats
    bytes: dict[str, int]
    # By the cause of the "failover" event: the reflex's "heartbeat" or
    # "carrier", the policy's "gray", "failback", "lower-latency", "forced", ...
    failovers: dict[str, int]


@dataclass(frozen=True)
class PairMetrics:
    role: str               # appliance.core.pair.ROLES
    token: int              # this node's fencing token (0 unless it owns)
    witness_reachable: bool
    peer_paths: dict[str, str]  # peer link -> fresh, dead or unknown
    fenced_packets: int     # tp_pair.fenced: class packets the gate dropped while standby
    role_changes: dict[str, int]  # pair-role changes since the daemon started, by cause


@dataclass(frozen=True)
class Snapshot:
    """Everything one scrape shows. Counters are cumulative; those read from
    the kernel's maps keep counting across daemon restarts, the rest start
    from zero with the daemon (Prometheus' rate() takes either)."""
    up_since_s: float       # Unix time the daemon started
    links: dict[str, LinkMetrics]
    classes: dict[str, ClassMetrics]
    sender_periods: int     # the heartbeat sender's (fastpath Sender) periods, late and skipped ones
    sender_late_periods: int
    sender_skipped_periods: int
    datapath_stats: dict[str, int]  # tp_gstats by layout.STATS name (Gateway.global_stats())
    feeds: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)  # feed -> "A"/"B" -> ARB_COUNTERS
    arbitration_passed: dict[str, dict[str, int]] = field(default_factory=dict)  # Arbiter.global_stats()
    pair: PairMetrics | None = None
    sender_restarts: int = 0   # heartbeat senders that died and were started again (each restarts sender_*)
    readings: int = 0          # the daemon's health readings (appliance.edge.pace) ...
    quiet_readings: int = 0    # ... after which it read seldom, the links quiet
    kernel_wakes: int = 0      # wakes from the kernel while quiet (ebpf/lib/wake.h)


def rtt_histogram(counts: list[int]) -> tuple[list[tuple[str, int]], float]:
    """The kernel's log-scale buckets as Prometheus' cumulative (le, count)
    pairs in seconds, and an estimated sum. The kernel keeps no sum, so each
    sample counts as its bucket's midpoint (off by at most half a bucket:
    0.5 us below 4 us, an eighth of the value above); the open-ended last
    bucket's samples count as its lower bound and, like every sample, in
    +Inf. A bucket holds whole microseconds below its upper bound, so le
    (<=) holds for each of its samples."""
    buckets, seen, sum_us = [], 0, 0.0
    for n, (low, high) in zip(counts, _RTT_BOUNDS_US):
        seen += n
        if high == float("inf"):
            sum_us += n * low
        else:
            sum_us += n * (low + high) / 2
            buckets.append((floatToGoString(high / 1e6), seen))
    buckets.append(("+Inf", seen))
    return buckets, sum_us / 1e6


def _families(s: Snapshot) -> list:
    rtt = HistogramMetricFamily(
        "twinpath_link_rtt_seconds", "Heartbeat round-trip time per link, from the kernel's log-scale histogram "
        "since its map was created; _sum is estimated from bucket midpoints (the kernel keeps no sum).",
        labels=["link"], unit="seconds")
    sent = CounterMetricFamily("twinpath_heartbeat_probes_sent_total",
                               "Heartbeat probes stamped and signed on the link's egress.", labels=["link"])
    replies = CounterMetricFamily("twinpath_heartbeat_replies_total",
                                  "Heartbeat replies accepted (authentic, in window, not replayed).", labels=["link"])
    send_errors = CounterMetricFamily("twinpath_heartbeat_send_errors_total",
                                      "Heartbeat probes the sender failed to send.", labels=["link"])
    up = GaugeMetricFamily("twinpath_link_up", "1 while the link's heartbeats are fresh.", labels=["link"])
    carrier = GaugeMetricFamily("twinpath_link_carrier", "1 while the link's device has carrier.", labels=["link"])
    drained = GaugeMetricFamily("twinpath_link_drained", "1 while an operator has drained the link.", labels=["link"])
    for name, m in s.links.items():
        rtt.add_metric([name], *rtt_histogram(m.rtt_buckets))
        sent.add_metric([name], m.probes_sent)
        replies.add_metric([name], m.replies)
        send_errors.add_metric([name], m.send_errors)
        up.add_metric([name], int(m.fresh))
        carrier.add_metric([name], int(m.carrier))
        drained.add_metric([name], int(m.drained))

    packets = CounterMetricFamily("twinpath_class_packets_total", "Packets steered, per class and link.",
                                  labels=["class", "link"])
    nbytes = CounterMetricFamily("twinpath_class_bytes_total", "Bytes steered, per class and link.",
                                 labels=["class", "link"])
    active = GaugeMetricFamily("twinpath_class_active_link",
                               "1 for the link a class is steered to now, 0 for its other links.",
                               labels=["class", "link"])
    failovers = CounterMetricFamily("twinpath_failovers_total", "Times a class changed link, by cause "
                                    "(a cause appears with its first failover).", labels=["class", "cause"])
    for name, c in s.classes.items():
        for link, n in c.packets.items():
            packets.add_metric([name, link], n)
        for link, n in c.bytes.items():
            nbytes.add_metric([name, link], n)
        for link in c.links:
            active.add_metric([name, link], int(link == c.link))
        for cause, n in c.failovers.items():
            failovers.add_metric([name, cause], n)

    families = [rtt, sent, replies, send_errors, up, carrier, drained, packets, nbytes, active, failovers]
    for counter, help_text in [
            ("periods", "Heartbeat sender periods (one probe round each)."),
            ("late_periods", "Heartbeat sender periods that started late."),
            ("skipped_periods", "Whole heartbeat sender periods missed (the sender was held off the CPU)."),
            ("restarts", "Heartbeat senders that died and were started again by the daemon; each restart "
                         "starts the other sender counters again from zero.")]:
        families.append(CounterMetricFamily(f"twinpath_heartbeat_sender_{counter}_total", help_text,
                                            value=getattr(s, f"sender_{counter}")))

    for name, value, help_text in [
            ("readings", s.readings, "Health readings of the links by the daemon (every 5 ms, or seldom while "
                                     "quiet)."),
            ("quiet_readings", s.quiet_readings, "Health readings after which every link was quiet, so the "
                                                 "daemon read seldom, armed to be woken by the kernel."),
            ("kernel_wakes", s.kernel_wakes, "Times a reply beyond a quiet link's bounds woke the daemon.")]:
        families.append(CounterMetricFamily(f"twinpath_daemon_{name}_total", help_text, value=value))

    datapath = CounterMetricFamily(
        "twinpath_datapath_packets_total", "Packets counted at the steer and heartbeat programs' side exits "
        "(tp_gstats, ebpf/lib/layout.h: drops, kernel-routing fallbacks, probes stamped, replies accepted); "
        "each stat counts something else, so do not sum across stat.", labels=["stat"])
    for stat, n in s.datapath_stats.items():
        datapath.add_metric([stat], n)
    families.append(datapath)

    if s.feeds:
        # One family per counter, not one with a result label: they overlap
        # (packets holds won, lost, ...; overlap is a kind of won) and
        # events_lost counts events, so a sum over such a label would mean nothing.
        for counter in ARB_COUNTERS:
            family = CounterMetricFamily(f"twinpath_arbitration_{counter}_total",
                                         f"Arbitration line counter '{counter}' (tp_line_stats, ebpf/lib/layout.h).",
                                         labels=["feed", "line"])
            for feed, lines in s.feeds.items():
                for line, counters in lines.items():
                    family.add_metric([feed, line], counters[counter])
            families.append(family)
        passed = CounterMetricFamily("twinpath_arbitration_passed_total",
                                     "Packets the arbitration program passed to the stack untouched, by reason.",
                                     labels=["line", "reason"])
        for line, reasons in s.arbitration_passed.items():
            for reason, n in reasons.items():
                passed.add_metric([line, reason], n)
        families.append(passed)

    if s.pair:
        families += _pair_families(s.pair)
    families.append(GaugeMetricFamily("twinpath_daemon_start_time_seconds", "Unix time the daemon started.",
                                      value=s.up_since_s, unit="seconds"))
    return families


def _pair_families(p: PairMetrics) -> list:
    from appliance.core.pair import ROLES
    role = GaugeMetricFamily("twinpath_pair_role", "1 for this gateway's HA pair role now, 0 for the others.",
                             labels=["role"])
    for name in ROLES:
        role.add_metric([name], int(name == p.role))
    paths = GaugeMetricFamily("twinpath_pair_peer_path_up", "1 while the peer answers on this path, 0 when it is "
                              "dead or not known yet.", labels=["link"])
    for link, state in p.peer_paths.items():
        paths.add_metric([link], int(state == "fresh"))
    changes = CounterMetricFamily("twinpath_pair_role_changes_total", "Role changes since the daemon started, by "
                                  "cause (a cause appears with its first change).", labels=["cause"])
    for cause, n in p.role_changes.items():
        changes.add_metric([cause], n)
    return [role, paths, changes,
            GaugeMetricFamily("twinpath_pair_token", "The witness's fencing token this gateway owns with (0: none).",
                              value=p.token),
            GaugeMetricFamily("twinpath_pair_witness_up", "1 while the witness (etcd) answers.",
                              value=int(p.witness_reachable)),
            CounterMetricFamily("twinpath_pair_fenced_packets_total", "Class packets the standby's gate dropped "
                                "(tp_pair.fenced: a trader still sending to a standby).", value=p.fenced_packets)]


class Collector:
    """prometheus_client custom collector over snapshot_fn(). A scrape whose
    snapshot fails shows only twinpath_scrape_errors_total (and the failure
    is logged), never half a snapshot; the endpoint keeps answering."""

    def __init__(self, snapshot_fn):
        self._snapshot_fn = snapshot_fn
        self._errors = 0
        self._lock = threading.Lock()  # scrapes run in concurrent request threads

    def collect(self):
        try:
            families = _families(self._snapshot_fn())
        except Exception:
            log.exception("metrics snapshot failed; this scrape shows only twinpath_scrape_errors_total")
            with self._lock:
                self._errors += 1
            families = []
        yield from families
        yield CounterMetricFamily("twinpath_scrape_errors_total",
                                  "Scrapes whose snapshot failed (each is logged with its traceback).",
                                  value=self._errors)


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True       # a stalled scraper neither blocks the next nor holds up stop()
    allow_reuse_address = True  # a restarted daemon rebinds despite the old socket's TIME_WAIT


class _QuietHandler(WSGIRequestHandler):
    timeout = 10  # seconds; an idle connection's thread ends

    def log_message(self, *args) -> None:
        """Silent: a line on stderr per scrape would flood journald."""


class MetricsServer:
    """/metrics on 127.0.0.1:port, served from daemon threads; port 0 binds
    an ephemeral port (tests), see .port. Also a context manager."""

    def __init__(self, port: int, snapshot_fn):
        self.registry = CollectorRegistry()  # ours alone: no default process/platform collectors
        self.registry.register(Collector(snapshot_fn))
        self._requested_port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def start(self) -> None:
        """ConfigError (naming metrics.port) if the port cannot be bound."""
        try:
            self._server = make_server(ADDRESS, self._requested_port, make_wsgi_app(self.registry),
                                       server_class=_Server, handler_class=_QuietHandler)
        except OSError as e:
            raise ConfigError(f"metrics.port: cannot serve metrics on {ADDRESS}:{self._requested_port}: "
                              f"{e.strerror or e}; choose a free port, or 0 for no endpoint") from e
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stops serving and closes the listening socket, so the port is free again."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
        self._server = self._thread = None

    def __enter__(self) -> MetricsServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
