"""bench.progress: counting, quiet mode, plain lines off a terminal (no kernel)."""
import io

from bench import progress
from bench.progress import Progress


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_bar_counts_what_it_is_told():
    with Progress(quiet=True) as p, p.bar("failover", 10, "trials") as bar:
        for _ in range(3):
            bar.advance()
        bar.advance(4)
    assert (bar.done, bar.total) == (7, 10)


def test_quiet_prints_nothing():
    for stream in (io.StringIO(), Terminal()):
        with Progress(quiet=True, stream=stream) as p:
            with p.bar("fastpath", 5, "rounds") as bar:
                bar.advance(5)
            with p.bar("fuzz", 100, "frames") as bar:
                bar.advance(60)
        assert stream.getvalue() == ""


def test_plain_lines_off_a_terminal_at_most_every_few_seconds():
    stream, clock = io.StringIO(), Clock()
    with Progress(stream=stream, clock=clock) as p, p.bar("failover", 400, "trials") as bar:
        for _ in range(200):
            clock.now += 0.125   # 25 s in all
            bar.advance()
    assert progress.PLAIN_EVERY_S == 10
    assert stream.getvalue().splitlines() == [
        "bench: failover: 0/400 trials",
        "bench: failover: 80/400 trials, 10s elapsed, about 40s left",
        "bench: failover: 160/400 trials, 20s elapsed, about 30s left",
        "bench: failover: 200/400 trials in 25s",
    ]


def test_a_failing_section_still_ends_its_line():
    stream = io.StringIO()
    try:
        with Progress(stream=stream) as p, p.bar("stress", 15, "s") as bar:
            bar.advance(2)
            raise RuntimeError("stress-ng missing")
    except RuntimeError:
        pass
    assert stream.getvalue().splitlines()[-1].startswith("bench: stress: 2/15 s in ")


def test_a_terminal_gets_rich_bars():
    stream = Terminal()
    with Progress(stream=stream) as p, p.bar("fastpath", 30, "rounds") as bar:
        bar.advance(30)
    assert "30/30" in stream.getvalue() and "fastpath" in stream.getvalue()


def test_the_time_left_leaves_out_the_set_up_before_the_first_unit():
    stream, clock = io.StringIO(), Clock()
    with Progress(stream=stream, clock=clock) as p, p.bar("fuzz", 1000, "frames") as bar:
        clock.now += 30       # compiling the programs
        bar.advance(0)        # a poll that found nothing done yet
        clock.now += 5
        bar.advance(100)
        clock.now += 5
        bar.advance(100)
    assert stream.getvalue().splitlines()[1:3] == ["bench: fuzz: 0/1,000 frames, 30s elapsed",
                                                   "bench: fuzz: 200/1,000 frames, 40s elapsed, about 40s left"]
