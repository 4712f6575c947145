import pytest

from keras_lemon.depth import copies_per_block
from keras_lemon.depth import depth_plan


def test_interleave_doubles_each_block():
    plan = depth_plan(2, 4)
    assert [(s.template, s.is_new) for s in plan] == [(0, False), (0, True), (1, False), (1, True)]
    # post-LN chain: source LN2 -> identity, new block carries it.
    assert plan[0].output_norm_from is None and plan[1].output_norm_from == 0
    assert plan[1].input_norm_identity and not plan[0].input_norm_identity


def test_interleave_more_than_double_and_uneven():
    assert copies_per_block(3, 7) == [2, 3, 2]
    plan = depth_plan(2, 7)
    assert len(plan) == 7 and sum(s.is_new for s in plan) == 5
    chain = [s for s in plan if s.template == 0]
    assert [s.output_norm_from for s in chain] == [None] * (len(chain) - 1) + [0]


def test_stack_appends_copies_in_order():
    plan = depth_plan(3, 8, "stack")
    assert [s.template for s in plan] == [0, 1, 2, 0, 1, 2, 0, 1]
    assert [s.is_new for s in plan] == [False] * 3 + [True] * 5
    assert plan[2].output_norm_from is None and plan[-1].output_norm_from == 2


def test_no_growth_is_identity():
    assert [(s.template, s.is_new, s.output_norm_from) for s in depth_plan(3, 3)] == [
        (0, False, 0), (1, False, 1), (2, False, 2)]


def test_bad_depth():
    with pytest.raises(ValueError, match="layers >= 4"):
        depth_plan(4, 3)
    with pytest.raises(ValueError, match="placement"):
        depth_plan(2, 4, "random")


@pytest.mark.parametrize("placement", ["interleave", "stack"])
def test_no_source_block_is_a_clear_error(placement):
    with pytest.raises(ValueError, match="at least one block, got 0"):
        depth_plan(0, 3, placement)


def test_positions_place_new_blocks_after_the_listed_blocks():
    plan = depth_plan(4, 7, positions=[1, 3, 3])
    assert [s.describe() for s in plan] == ["0", "1", "new<-1", "2", "3", "new<-3", "new<-3"]
    # post-LN chain after block 3: its LN2 moves to the last new block.
    assert [s.output_norm_from for s in plan[4:]] == [None, None, 3]


@pytest.mark.parametrize("positions,layers,match", [
    ([4], 5, r"positions \[4\] are not source block indices.*0 to 3"),
    ([1, 2], 5, "layers must be 6"),
    ("1,2", 6, "must be a list"),
])
def test_bad_positions_are_value_errors(positions, layers, match):
    with pytest.raises(ValueError, match=match):
        depth_plan(4, layers, positions=positions)
