"""Paired accuracy comparison on hand-built correctness rows."""

from __future__ import annotations

import pytest
import torch

from mmfurnace.errors import InputError
from mmfurnace.train.paired import correct_rows, gap_over_splits, paired_accuracy


def test_identical_models_have_no_gap():
    right = torch.tensor([True, False, True, True, False] * 20)
    gap = paired_accuracy(right, right, resamples=500)
    assert (gap.delta, gap.low, gap.high) == (0, 0, 0)
    assert (gap.only_a, gap.only_b, gap.rows) == (0, 0, 100)


def test_a_clear_gap_excludes_zero_and_counts_the_rows_each_gets_alone():
    a = torch.ones(200, dtype=torch.bool)
    b = torch.arange(200) % 2 == 0  # right on half the rows
    gap = paired_accuracy(a, b, resamples=2000)
    assert gap.delta == pytest.approx(0.5)
    assert 0.35 < gap.low < 0.5 < gap.high < 0.65
    assert (gap.only_a, gap.only_b) == (100, 0)


def test_one_row_apart_on_a_small_set_is_undecided():
    """141 rows, 20 disagreements split 11 / 9: the interval spans 0."""
    a = torch.zeros(141, dtype=torch.bool)
    b = torch.zeros(141, dtype=torch.bool)
    a[:100] = b[:100] = True
    a[100:111] = True
    b[111:120] = True
    gap = paired_accuracy(a, b)
    assert gap.delta == pytest.approx(2 / 141)
    assert gap.low < 0 < gap.high
    assert (gap.only_a, gap.only_b) == (11, 9)


def test_runs_of_a_model_are_averaged_before_the_gap():
    # a: two seeds, right on rows {0,1} and {0,2}; b: one run, right on row 0 only (4 rows)
    a = torch.tensor([[1, 1, 0, 0], [1, 0, 1, 0]], dtype=torch.bool)
    b = torch.tensor([1, 0, 0, 0], dtype=torch.bool)
    gap = paired_accuracy(a, b, resamples=200)
    assert gap.delta == pytest.approx(0.5 - 0.25)
    assert (gap.only_a, gap.only_b) == (1, 0)
    again = paired_accuracy(a, b, resamples=200)
    assert (gap.low, gap.high) == (again.low, again.high)  # seeded: the same interval


def test_groups_of_one_row_resample_as_rows_do():
    a = torch.arange(141) % 3 != 0
    b = torch.arange(141) % 4 != 0
    rows = paired_accuracy(a, b, resamples=500)
    singles = paired_accuracy(a, b, groups=[f"g{i}" for i in range(141)], resamples=500)
    assert (singles.low, singles.high) == pytest.approx((rows.low, rows.high))
    assert (rows.groups, singles.groups) == (None, 141)


def test_rows_of_a_group_are_resampled_together():
    """20 groups of 10 identical rows: a is ahead on 12 whole groups, b on 8. Row by row this
    looks like 200 independent rows (interval excluding 0); as 20 groups it is 12 against 8."""
    a = torch.tensor([i < 12 for i in range(20)]).repeat_interleave(10)
    b = ~a
    groups = torch.arange(20).repeat_interleave(10).tolist()
    rows = paired_accuracy(a, b, resamples=2000)
    clustered = paired_accuracy(a, b, groups=groups, resamples=2000)
    assert clustered.delta == rows.delta == pytest.approx(0.2)
    assert rows.low > 0  # rows treated as independent
    assert clustered.low < 0 < clustered.high  # 20 groups cannot tell 12 from 8
    assert clustered.groups == 20
    with pytest.raises(InputError, match="19 group keys for 200 rows"):
        paired_accuracy(a, b, groups=groups[:19])


def test_correct_rows_single_and_multilabel():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, -1.0]])
    assert correct_rows(logits, torch.tensor([0, 0, 0])).tolist() == [True, False, True]
    multi = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    assert correct_rows(logits, multi, multilabel=True).tolist() == [True, True, False]
    seeds = torch.stack([logits, -logits])  # (runs, rows, classes)
    assert correct_rows(seeds, torch.tensor([0, 1, 0])).tolist() == [[True, True, True], [False, False, False]]


@pytest.mark.parametrize(("a", "b"), [(torch.ones(5, dtype=torch.bool), torch.ones(6, dtype=torch.bool)),
                                  (torch.ones(0, dtype=torch.bool), torch.ones(0, dtype=torch.bool))])
def test_rows_that_do_not_pair_are_an_input_error(a, b):
    with pytest.raises(InputError, match="paired comparison"):
        paired_accuracy(a, b)


def test_gap_over_splits_matches_a_hand_computed_t_interval_and_sign_test():
    """gaps 2, 1, -1, 4 pt: mean 1.5, sd sqrt(13/3) = 2.0817, t(0.975, 3) = 3.1824 -> half
    width 3.3124 pt; 3 wins, 1 loss -> p = 2 * (1 + 4) / 16 = 0.625."""
    over = gap_over_splits([0.82, 0.81, 0.79, 0.84], [0.80, 0.80, 0.80, 0.80])
    assert over.mean == pytest.approx(0.015)
    assert over.sd == pytest.approx(0.020817, abs=1e-6)
    assert over.low == pytest.approx(0.015 - 0.033124, abs=1e-6)
    assert over.high == pytest.approx(0.015 + 0.033124, abs=1e-6)
    assert (over.splits, over.wins, over.losses, over.ties) == (4, 3, 1, 0)
    assert over.sign_p == pytest.approx(0.625)


def test_gap_over_splits_ahead_on_every_split_is_decided():
    a = [0.85, 0.86, 0.84, 0.87, 0.85, 0.86, 0.85, 0.86, 0.84, 0.85]
    over = gap_over_splits(a, [x - 0.03 for x in a])
    assert over.low > 0
    assert over.wins == 10
    assert over.sign_p == pytest.approx(2 / 2**10)


def test_gap_over_one_split_has_no_interval_and_ties_count_apart():
    over = gap_over_splits([0.8], [0.8])
    assert (over.mean, over.sd, over.low, over.high) == (0, None, None, None)
    assert (over.ties, over.sign_p) == (1, 1.0)
    # float32 shares of the same rows: 114/141 as a seed mean and as one fit differ in the 8th digit
    same = gap_over_splits([float(torch.tensor(114 / 141, dtype=torch.float32))], [114 / 141])
    assert (same.wins, same.losses, same.ties) == (0, 0, 1)


def test_gap_over_splits_needs_one_accuracy_per_split_for_both():
    with pytest.raises(InputError, match="one accuracy per split"):
        gap_over_splits([0.8, 0.9], [0.8])
    with pytest.raises(InputError, match="one accuracy per split"):
        gap_over_splits([], [])
