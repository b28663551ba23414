"""The market-data publisher and receiver in a real lab, without twinpath.

With no arbiter on gw, plain kernel routing forwards both lines' copies to
the trader, so the receiver must see every packet the plan sends.
"""
import json
import subprocess
import sys

import pytest

from lab import faults, feedrun, topology
from lab.feedplan import FeedPlan, LineFaults, expected
from lab.feedrun import MARKETDATA
from lab.marketdata import load_received
from lab.processes import Tool

pytestmark = pytest.mark.kernel


def marketdata_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", MARKETDATA, *args]


def tool(lab, role: str, *args: str) -> Tool:
    return Tool.in_lab(lab, role, *args, module=MARKETDATA)


def run_feed(lab, plan: FeedPlan, workdir, port: int) -> tuple[dict, dict, dict]:
    """Publishes plan from exch to the trader; returns (publisher, receiver, check) results."""
    run = feedrun.run_feed(lab, plan, workdir, port)
    return run.published, run.received, run.result


def assert_clean_transport(published, received, plan):
    planned = expected(plan)["lines"]
    assert published["stopped"] is None
    assert published["errors"] == {"A": 0, "B": 0}
    assert published["packets"] == published["planned"]
    assert published["planned"] == {line: sum(planned[line][k] for k in ("data_packets", "heartbeats",
                                                                          "end_of_session")) for line in "AB"}
    assert received["socket_drops"] == 0
    assert received["malformed"] == 0
    assert received["ended"] == "idle"


def test_both_lines_reach_the_trader_without_an_arbiter(lab, tmp_path):
    plan = FeedPlan(messages=10_000, rate=20_000)
    published, received, result = run_feed(lab, plan, tmp_path, 9400)
    assert_clean_transport(published, received, plan)
    assert received["packets"] == 20_000
    assert result["delivered"] == result["sent"] == 10_000
    assert result["missing"] == {}
    # Every seq came twice, one packet each: whichever copy came second is a duplicate.
    assert result["delivered_twice"] == expected(plan)["lines"]["B"]["data_packets"] == 10_000
    assert result["redundant_messages"] == 0
    assert result["corrupt"] == result["unexpected"] == 0
    assert result["by_line"] == {line: {"data": 10_000, "heartbeat": 0, "end": 0} for line in "AB"}


def test_faulty_plan_arrives_as_expected(lab, tmp_path):
    plan = FeedPlan(messages=10_000, rate=20_000, batch_a=4, batch_b=2, heartbeat_every=1000,
                    end_of_session=True, session_change_at=6000,
                    line_a=LineFaults(loss=0.05, reorder=0.02, delay_us=30),
                    line_b=LineFaults(loss=0.05, duplicate=0.02, down_after=9000))
    exp = expected(plan)
    published, received, result = run_feed(lab, plan, tmp_path, 9401)
    assert_clean_transport(published, received, plan)
    for line in "AB":
        assert result["by_line"][line] == {"data": exp["lines"][line]["data_packets"],
                                           "heartbeat": exp["lines"][line]["heartbeats"],
                                           "end": exp["lines"][line]["end_of_session"]}
    assert exp["gaps_expected"]  # the check below compares something
    assert result["missing"] == exp["gaps_expected"]
    assert result["missing_matches_expected"] is True
    assert result["delivered"] == 10_000 - result["missing_messages"]
    assert result["corrupt"] == result["unexpected"] == 0


@pytest.mark.parametrize("dead, live", [("A", "B"), ("B", "A")])
def test_each_line_travels_over_its_own_carrier(lab, tmp_path, dead, live):
    plan = FeedPlan(messages=2000, rate=20_000)
    faults.inject(lab, "blackhole", dead)
    try:
        _published, _received, result = run_feed(lab, plan, tmp_path, 9402)
    finally:
        faults.clear(lab, "blackhole", dead)
    assert result["by_line"][dead]["data"] == 0
    assert result["by_line"][live]["data"] == 2000
    assert result["delivered"] == 2000
    assert result["delivered_twice"] == 0


def test_mdp3_feed_is_stamped_at_send(lab, tmp_path):
    plan = FeedPlan(protocol="mdp3", messages=5000, rate=20_000)
    published, received, result = run_feed(lab, plan, tmp_path, 9403)
    assert_clean_transport(published, received, plan)
    assert (result["delivered"], result["delivered_twice"], result["corrupt"]) == (5000, 5000, 0)
    sending_ns = load_received(tmp_path / "received.npy")["sending_ns"]
    # SendingTime is the wall clock at each send: spread over the run, never 0.
    assert sending_ns.min() > 0
    assert 0.2e9 <= int(sending_ns.max() - sending_ns.min()) <= (published["duration_s"] + 0.1) * 1e9


def test_receiver_reports_on_sigterm(lab, tmp_path):
    with tool(lab, "trader", "receive", "--protocol", "moldudp64", "--bind", topology.FEED_DST,
              "--port", "9404", "--timeout", "30", "--out", str(tmp_path / "none.npy")) as receiver:
        receiver.wait_ready()
        receiver.proc.terminate()
        result = receiver.result(timeout_s=10)
    assert (result["ended"], result["packets"]) == ("signal", 0)
    assert len(load_received(tmp_path / "none.npy")) == 0


def test_publisher_setup_error(tmp_path):
    done = subprocess.run(marketdata_argv("publish", "--plan", str(tmp_path / "missing.json"), "--dst",
                                          topology.FEED_DST, "--port", "9405", "--src-a", "198.18.30.1",
                                          "--src-b", "198.18.30.2", "--timeout", "5"),
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "cannot use plan" in json.loads(done.stdout)["error"]
