"""router.embedding.length_groups: the ONNX encoder's batches of similar token lengths."""

from __future__ import annotations

import random

import pytest

from router.embedding import length_groups


@pytest.mark.parametrize("seed", range(20))
def test_groups_cover_every_row_once_and_bound_the_padding(seed):
    rng = random.Random(seed)
    lengths = [rng.choice([rng.randint(3, 20), rng.randint(60, 120), rng.randint(200, 256)])
               for _ in range(rng.randint(1, 90))]
    groups = length_groups(lengths, max_batch=16, slack=0.2)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    for g in groups:
        assert 1 <= len(g) <= 16
        assert lengths[g[0]] == max(lengths[i] for i in g)  # padded to its first, the longest
        if len(g) > 1:
            assert len(g) * lengths[g[0]] <= 1.2 * sum(lengths[i] for i in g)


def test_alike_lengths_share_one_pass_and_mixed_ones_do_not():
    assert length_groups([50] * 10, max_batch=64) == [list(range(10))]
    assert len(length_groups([50] * 10, max_batch=4)) == 3
    # a 256-token text padded with 9 short ones would cost 10 x 256 for 256 + 9 x 8 real tokens
    groups = length_groups([8] * 9 + [256], max_batch=64)
    assert groups[0] == [9] and sorted(groups[1]) == list(range(9))
    assert length_groups([], max_batch=8) == []
