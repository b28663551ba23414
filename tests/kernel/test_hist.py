"""tp_us_bucket() (ebpf/lib/hist.h), as BCC compiles it, puts every
nanosecond value in the bucket whose bounds appliance.layout reports: at
each bucket's edges, where its divide-free ns -> us step could be off by
one, and past the range that step covers."""
import random
import struct

import pytest
from bcc import BPF

from appliance import layout
from appliance.edge.bpfsource import assemble
from lab.libbpf import prog_test_run

# The packet's first 8 bytes are the value; the verdict is its bucket.
SOURCE = """
int bucket(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	if (data + 8 > (void *)(long)ctx->data_end)
		return -1;
	return tp_us_bucket(*(__u64 *)data);
}
"""


@pytest.fixture(scope="module")
def bucket_prog():
    bpf = BPF(text=(assemble(["lib/hist.h"]) + SOURCE).encode())
    yield bpf.load_func("bucket", BPF.XDP)
    bpf.cleanup()


def edges_ns() -> list[int]:
    values = []
    for b in range(layout.HIST_BUCKETS):
        low, high = layout.hist_bucket_bounds_us(b)
        values += [int(low) * 1000, int(low) * 1000 + 999]
        if high != float("inf"):
            values += [int(high) * 1000 - 1]
    rng = random.Random(15)
    values += [rng.randrange(1 << 27) for _ in range(200)]
    return values + [(1 << 27) - 1, 1 << 27, 1 << 40, (1 << 63) + 5, (1 << 64) - 1]


def test_every_value_lands_in_the_bucket_its_bounds_name(bucket_prog):
    wrong = []
    for ns in edges_ns():
        verdict, _out, _ = prog_test_run(bucket_prog.fd, struct.pack("<Q", ns) + bytes(56))
        low, high = layout.hist_bucket_bounds_us(verdict)
        if not low <= ns / 1000 < high or verdict >= layout.HIST_BUCKETS:
            wrong.append((ns, verdict, low, high))
    assert not wrong
