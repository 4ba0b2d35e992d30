"""Parallel tensor shapes and the four parallel operators (pure Python, no runtime)."""

from __future__ import annotations

import itertools

import pytest

from unity_legion.pcg.parallel_ops import (Combine, FusedParallelOp, Partition, Reduce, Replicate,
                                           conversion)
from unity_legion.types import ParallelShapeError, ParallelTensorShape, TensorShape

X = TensorShape((12, 10))  # 480 bytes in float32


def shape(*degrees: int, sum_degree: int = 1, copy_degree: int = 1) -> ParallelTensorShape:
    return ParallelTensorShape.of(X, degrees or None, sum_degree, copy_degree)


def test_pieces_and_bytes() -> None:
    s = shape(4, 3, copy_degree=2)
    assert s.piece_shape().dims == (3, 4)
    assert s.num_pieces == 24 and s.shard_degree == 12
    assert s.piece_bytes() == 48 and s.num_bytes() == 480
    assert str(s) == "[12/4, 10/3]{copy=2}"
    uneven = ParallelTensorShape.of(TensorShape((7,)), (3,))
    assert uneven.piece_shape().dims == (3,) and uneven.dims[0].tiles == 3


def test_each_operator_changes_what_it_says() -> None:
    assert Partition(0, 4).infer(shape()).degrees == (4, 1)
    assert Combine(0, 2).infer(shape(4, 1)).degrees == (2, 1)
    assert Replicate(3).infer(shape(2, 1)).copy_degree == 3
    assert Reduce(2).infer(shape(sum_degree=4)).sum_degree == 2


@pytest.mark.parametrize("op,src", [(Partition(1, 5), shape(2, 1)), (Combine(0, 2), shape(4, 1))])
def test_backward_of_partition_and_combine_restores_the_shape(op, src) -> None:
    assert op.backward_op().infer(op.infer(src)) == src


def test_backward_of_copies_is_a_sum_and_back() -> None:
    assert Replicate(3).backward_op() == Reduce(3)
    assert Reduce(2).backward_op() == Replicate(2)
    chain = FusedParallelOp((Partition(0, 2), Replicate(2)))
    assert chain.backward_op() == FusedParallelOp((Reduce(2), Combine(0, 2)))


def test_bytes_moved() -> None:
    # 480 bytes split 4 ways from one device: 3 of 4 quarter pieces leave it
    assert Partition(0, 4).bytes_moved(shape()) == 360
    # gathering 4 quarters onto one device: 3 arrive
    assert Combine(0, 4).bytes_moved(shape(4, 1)) == 360
    # 2 pieces each copied to 2 more devices
    assert Replicate(3).bytes_moved(shape(2, 1)) == 2 * 2 * 240
    # 4 partial copies summed into 1: 3 travel
    assert Reduce(4).bytes_moved(shape(sum_degree=4)) == 3 * 480
    fused = FusedParallelOp((Reduce(4), Partition(0, 2)))
    assert fused.bytes_moved(shape(sum_degree=4)) == 3 * 480 + 240
    assert fused.infer(shape(sum_degree=4)) == shape(2, 1)


@pytest.mark.parametrize("bad,src,match", [
    (Partition(0, 5), shape(3, 1), "cannot cut a dimension of size 12 into 15"),
    (Partition(2, 2), shape(), "out of range"),
    (Combine(0, 3), shape(2, 1), "not a multiple of 3"),
    (Reduce(2), shape(), "sum degree 1 is not a multiple of 2"),
])
def test_illegal_operators_fail_clearly(bad, src, match) -> None:
    with pytest.raises(ParallelShapeError, match=match):
        bad.infer(src)


def test_degree_must_be_positive() -> None:
    with pytest.raises(ParallelShapeError, match="positive integer"):
        Partition(0, 0)
    with pytest.raises(ParallelShapeError, match="positive integer"):
        ParallelTensorShape.of(X, (1, -2))


DEGREES = (1, 2, 3, 4, 6)


@pytest.mark.parametrize("a0,a1,b0,b1", [c for c in itertools.product(DEGREES, repeat=4)
                                         if c[0] != c[2] or c[1] != c[3]][::7])
def test_conversion_reaches_the_target(a0: int, a1: int, b0: int, b1: int) -> None:
    for sums, copies in ((1, (1, 1)), (2, (1, 2)), (4, (2, 4))):
        src = ParallelTensorShape.of(X, (a0, a1), sums, copies[0])
        dst = ParallelTensorShape.of(X, (b0, b1), 1, copies[1])
        ops = conversion(src, dst)
        assert FusedParallelOp(ops).infer(src) == dst, (src, dst, ops)


def test_conversion_of_equal_shapes_is_empty_and_impossible_ones_fail() -> None:
    assert conversion(shape(2, 1), shape(2, 1)) == ()
    with pytest.raises(ParallelShapeError, match="partial sums cannot be created"):
        conversion(shape(), shape(sum_degree=2))
    with pytest.raises(ParallelShapeError, match="different tensors"):
        conversion(shape(), ParallelTensorShape.of(TensorShape((12, 11))))
