"""cu_seqlens helpers: the once-per-tensor check, per-forward shared index tensors, empty-document padding."""

from __future__ import annotations

import pytest
import torch

from rodimus.ops.packing import check_cu_seqlens, derived, pad_cu_seqlens, shared_derived


def test_check_remembers_a_valid_tensor_until_it_changes():
    cu = torch.tensor([0, 3, 5])
    with shared_derived():  # a model forward
        assert check_cu_seqlens(cu, 5) == 2
        assert check_cu_seqlens(cu, 5) == 2  # remembered: no second read of the values
        with pytest.raises(ValueError, match="rise from 0 to T=6"):
            check_cu_seqlens(cu, 6)  # another total is checked afresh
        cu[1] = 7  # an in-place change bumps the version: checked again
        with pytest.raises(ValueError, match="rise from 0 to T=5"):
            check_cu_seqlens(cu, 5)
    with pytest.raises(ValueError, match="rise from 0 to T=5"):
        check_cu_seqlens(cu, 5)  # outside a forward every call checks
    with pytest.raises(ValueError, match="1-D integer"):
        check_cu_seqlens(torch.tensor([0.0, 5.0]), 5)


def test_derived_is_shared_only_inside_the_block():
    cu, calls = torch.tensor([0, 2, 4]), []

    def make():
        calls.append(1)
        return cu * 2

    derived(cu, ("k",), make)
    derived(cu, ("k",), make)
    assert len(calls) == 2  # outside a block: computed every time
    with shared_derived():
        first = derived(cu, ("k",), make)
        assert derived(cu, ("k",), make) is first and len(calls) == 3
        derived(cu, ("other",), make)  # another key
        cu.add_(0)  # a new version of the offsets
        derived(cu, ("k",), make)
        assert len(calls) == 5
    with shared_derived():  # a new block starts empty
        derived(cu, ("k",), make)
    assert len(calls) == 6


def test_pad_appends_empty_documents():
    cu = torch.tensor([0, 4, 9], dtype=torch.int32)
    padded = pad_cu_seqlens(cu, 4)
    assert padded.tolist() == [0, 4, 9, 9, 9] and padded.dtype == torch.int32
    assert pad_cu_seqlens(cu, 2) is cu
    assert pad_cu_seqlens(cu, 1) is None
