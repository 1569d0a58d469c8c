"""franca.utils.grid.round_to_patch, the one size rule: round down to a patch multiple, below one patch an error."""

from __future__ import annotations

import logging

import pytest

from franca.utils.grid import round_to_patch


@pytest.mark.parametrize("size,patch,expected", [(32, 8, 32), (39, 8, 32), (8, 8, 8), (224, 14, 224), (230, 14, 224)])
def test_rounds_down_to_a_multiple_of_the_patch(size, patch, expected):
    assert round_to_patch(size, patch) == expected


def test_a_side_below_one_patch_is_an_error_naming_it():
    with pytest.raises(ValueError, match=r"^--size 7 is smaller than the patch size 8$"):
        round_to_patch(7, 8, what="--size")


def test_announce_says_once_when_the_size_changes(caplog):
    with caplog.at_level(logging.INFO, logger="franca.utils.grid"):
        round_to_patch(32, 8, what="--size", announce=True)
        round_to_patch(39, 8, what="--size")
        round_to_patch(39, 8, what="--size", announce=True)
    assert [r.getMessage() for r in caplog.records] == ["--size 39 is not a multiple of the patch size 8: using 32"]
