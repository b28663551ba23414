"""bpfsys.ArrayMap against a real array map: the elements, a copy per
read, a layout that does not match the map refused, a failed lookup raised."""
import ctypes
import os

import pytest

from appliance import layout
from appliance.edge import bpfsys

BPF_MAP_TYPE_ARRAY = 2


@pytest.fixture
def health_map():
    fd = bpfsys.check(bpfsys.LIBBPF.bpf_map_create(BPF_MAP_TYPE_ARRAY, b"tp_test_arr", 4,
                                                   ctypes.sizeof(layout.Health), 3, None), "map create")
    yield fd
    os.close(fd)


def test_reads_every_element_into_a_fresh_copy(health_map):
    for i in range(3):
        bpfsys.map_update(health_map, ctypes.c_uint32(i), layout.Health(last_reply_ns=1000 + i, unanswered=i))
    reader = bpfsys.ArrayMap(health_map, layout.Health, 3, ctypes.sizeof(layout.Health))
    first = reader.read()
    assert [(h.last_reply_ns, h.unanswered) for h in first] == [(1000, 0), (1001, 1), (1002, 2)]
    bpfsys.map_update(health_map, ctypes.c_uint32(1), layout.Health(last_reply_ns=7, unanswered=9))
    second = reader.read()
    assert (second[1].last_reply_ns, second[1].unanswered) == (7, 9)
    assert (first[1].last_reply_ns, first[1].unanswered) == (1001, 1)     # an earlier read is not overwritten


def test_a_value_type_longer_than_the_maps_values_is_refused(health_map):
    with pytest.raises(ValueError, match="bytes, the map's values"):
        bpfsys.ArrayMap(health_map, layout.RttRing, 3, ctypes.sizeof(layout.Health))


class Older(ctypes.Structure):
    """tp_health as a release before the last field was appended knew it."""
    _fields_ = layout.Health._fields_[:-1]


def test_a_layout_with_fields_appended_is_read_and_written_field_by_known_field(health_map):
    bpfsys.map_update(health_map, ctypes.c_uint32(1), layout.Health(last_reply_ns=5, stamped_seq=77))
    array = bpfsys.ArrayMap(health_map, Older, 3, ctypes.sizeof(layout.Health))
    assert array.read()[1].last_reply_ns == 5
    array.write(1, Older(last_reply_ns=6))
    value = layout.Health()
    bpfsys.map_lookup(health_map, ctypes.c_uint32(1), value)
    assert (value.last_reply_ns, value.stamped_seq) == (6, 77)     # the field it does not know is kept


def test_reads_the_first_n_elements_of_a_longer_map_in_one_batch(health_map):
    bpfsys.map_update(health_map, ctypes.c_uint32(1), layout.Health(last_reply_ns=11))
    bpfsys.map_update(health_map, ctypes.c_uint32(2), layout.Health(last_reply_ns=12))
    assert [h.last_reply_ns for h in bpfsys.ArrayMap(health_map, layout.Health, 2,
                                                     ctypes.sizeof(layout.Health)).read()] == [0, 11]


def test_an_element_past_the_end_raises(health_map):
    reader = bpfsys.ArrayMap(health_map, layout.Health, 4, ctypes.sizeof(layout.Health))
    with pytest.raises(OSError, match="map lookup"):
        reader.read()


def test_reads_plain_integers_too():
    fd = bpfsys.check(bpfsys.LIBBPF.bpf_map_create(BPF_MAP_TYPE_ARRAY, b"tp_test_u64", 4, 8, 2, None), "map create")
    try:
        bpfsys.map_update(fd, ctypes.c_uint32(1), ctypes.c_uint64(2**63 + 5))
        assert [v.value for v in bpfsys.ArrayMap(fd, ctypes.c_uint64, 2, 8).read()] == [0, 2**63 + 5]
    finally:
        os.close(fd)


def test_writes_an_element(health_map):
    array = bpfsys.ArrayMap(health_map, layout.Health, 3, ctypes.sizeof(layout.Health))
    array.write(2, layout.Health(last_reply_ns=99, unanswered=4))
    assert [(h.last_reply_ns, h.unanswered) for h in array.read()] == [(0, 0), (0, 0), (99, 4)]
    with pytest.raises(OSError, match="map update"):
        array.write(3, layout.Health())
