"""appliance.layout's tp_feed_index placement: every feed in a slot of its
own, the same slots for the same feeds, a clear error when none exists."""
import random

import pytest

from appliance import layout


def keys(n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return rng.sample([(addr << 16) | port for addr in range(1, 64) for port in range(1000, 1064)], n)


@pytest.mark.parametrize("seed", range(50))
def test_every_feed_gets_a_slot_of_its_own(seed):
    feed_keys = keys(layout.ARB_FEEDS, seed)
    mult = layout.feed_index_mult(feed_keys)
    assert mult & 1
    slots = [layout.feed_index_slot(k, mult) for k in feed_keys]
    assert len(set(slots)) == len(feed_keys) and all(0 <= s < layout.FEED_INDEX_SLOTS for s in slots)


def test_the_same_feeds_get_the_same_multiplier():
    assert layout.feed_index_mult(keys(8, 1)) == layout.feed_index_mult(keys(8, 1))


def test_the_slot_is_the_top_bits_of_the_64_bit_product():
    assert layout.feed_index_slot(1, 1 << 63 | 1) == (1 << 63 | 1) >> (64 - layout.FEED_INDEX_BITS)
    assert layout.feed_index_slot(3, 1 << 63 | 1) == ((3 * (1 << 63 | 1)) % 2**64) >> (64 - layout.FEED_INDEX_BITS)


def test_no_feeds_need_no_slot_and_a_repeated_destination_is_refused():
    assert layout.feed_index_mult([]) & 1
    with pytest.raises(ValueError, match="same destination"):
        layout.feed_index_mult([5, 5], tries=100)
