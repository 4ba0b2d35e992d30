"""Spatial (height / width) splits of Conv2D and Pool2D move only halos: each point receives its
tile's window of the image it reads (the tile plus the halo its window needs), never the whole
image, and the results equal the serial run.

The kernels' helpers are wrapped to record the piece each point received; the expected windows
are computed here by brute force from the window arithmetic (which rows some tap of some output
of the tile reads), independently of the operators' own `Reach`.
"""

from __future__ import annotations

import math
import threading
from typing import Any, Callable

import numpy as np
import pytest

import unity_legion.operators.conv2d as conv_mod
import unity_legion.operators.pooling as pool_mod
from op_check import randn, run_op
from parallel_check import compare, planned
from unity_legion.executor.launcher import launch_boxes
from unity_legion.operators.base import ceil_div, origin_of
from unity_legion.operators.conv2d import Conv2D
from unity_legion.operators.pooling import Pool2D
from unity_legion.operators.spatial import Reach, Windowed, out_size_and_pads
from unity_legion.types import TensorShape

RNG = np.random.default_rng(11)


def _tiles(size: int, degree: int) -> list[tuple[int, int]]:
    """The executor's tiling of `size` positions `degree` ways (pieces of ceil(size / degree))."""
    t = ceil_div(size, degree)
    return [(i, min(i + t, size)) for i in range(0, size, t)]


def _reads(o0: int, o1: int, k: int, s: int, d: int, pad: int, size: int) -> tuple[int, int]:
    """Input positions [lo, hi) from the first to the last that a tap of outputs [o0, o1)
    reaches, clipped to the input (with strides or dilation, positions in between may go
    unread: the kernels read a window as one block)."""
    rows = [o * s - pad + i * d for o in range(o0, o1) for i in range(k)]
    return max(min(rows), 0), min(max(rows) + 1, size)


def _reached_by(r0: int, r1: int, k: int, s: int, d: int, pad: int, out: int
                ) -> tuple[int, int] | None:
    """Output positions [lo, hi) whose windows (from their first tap to their last) overlap
    input positions [r0, r1)."""
    outs = [o for o in range(out) if o * s - pad < r1 and o * s - pad + (k - 1) * d >= r0]
    return (min(outs), max(outs) + 1) if outs else None


class _Recorder:
    """Wraps a module function; records what `pick` makes of each call's arguments."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, module: Any, name: str,
                 pick: Callable[..., Any]) -> None:
        self.seen: list[Any] = []
        lock = threading.Lock()
        real = getattr(module, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with lock:  # tasks run on the processors' threads
                self.seen.append(pick(*args, **kwargs))
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, wrapper)


def _hw(a: np.ndarray, channels_first: bool) -> tuple[int, int]:
    return (a.shape[2], a.shape[3]) if channels_first else (a.shape[1], a.shape[2])


CONV_CASES = {
    # 16 x 12 over a 2 x 2 grid of tiles, "same" padding: 1-pixel halos (9 of 16 rows, 7 of 12)
    "same_2x2": (Conv2D(4, 3, padding="same"), (2, 16, 12, 3), {"height": 2, "width": 2}),
    # uneven tiles (15 output rows over 4: 4, 4, 4, 3), strides and dilation, channels_first
    "valid_strided_dilated_cf": (
        Conv2D(3, (3, 2), strides=(2, 1), dilation_rate=(2, 1), data_format="channels_first"),
        (2, 2, 34, 9), {"height": 4}),
    # a fused activation (preact, y windowed too in backward) with samples split as well
    "relu_same_strided_mixed": (Conv2D(2, 3, strides=2, padding="same", activation="relu"),
                                (3, 13, 11, 2), {"sample": 2, "width": 2}),
}


@pytest.mark.parametrize("name", sorted(CONV_CASES))
def test_conv2d_points_receive_only_their_windows(monkeypatch: pytest.MonkeyPatch,
                                                  name: str) -> None:
    op, shape, config = CONV_CASES[name]
    cf = op.channels_first
    x = randn(RNG, *shape, dtype=np.float64)
    h, w_ = _hw(x, cf)
    s = TensorShape(shape)
    _, _, _, ho, wo, (pt, _, pl, _) = op._geometry(s)
    (kh, kw), (sh, sw), (dh, dw) = op.kernel_size, op.strides, op.dilation_rate
    serial = run_op(op, [x])

    fwd = _Recorder(monkeypatch, conv_mod, "_forward_into",
                    lambda x, k, b, out, g, c, start, in_hw: (start, _hw(out, c), _hw(x, c)))
    wgt = _Recorder(monkeypatch, conv_mod, "_weight_grads",
                    lambda x, gout, dk, db, g, c, start, in_hw: (start, _hw(gout, c), _hw(x, c)))
    inp = _Recorder(monkeypatch, conv_mod, "_input_grad_into",
                    lambda pre, y, dy, k, dx, origin, g, c, fn, in_hw, out_hw:
                    (conv_mod.tile_start(origin, c), _hw(dx, c), _hw(dy, c), _hw(pre, c)))
    got = run_op(op, [x], serial.weights, output_grads=serial.output_grads,
                 executor=planned(config))
    compare(serial, got, f"{name} {config}")

    points = math.prod(config.values())
    hdeg, wdeg = config.get("height", 1), config.get("width", 1)
    # forward and the kernel gradient: output tile -> the input rows / columns it reads
    want_out = {}
    for o0, o1 in _tiles(ho, hdeg):
        for p0, p1 in _tiles(wo, wdeg):
            r = _reads(o0, o1, kh, sh, dh, pt, h)
            c = _reads(p0, p1, kw, sw, dw, pl, w_)
            want_out[(o0, p0)] = ((o1 - o0, p1 - p0), (r[1] - r[0], c[1] - c[0]))
    for rec in (fwd, wgt):
        assert len(rec.seen) == points
        assert {start: (tile, piece) for start, tile, piece in rec.seen} == want_out
    # input gradient: input tile -> the d_out rows / columns whose windows reach it
    want_in = {}
    for r0, r1 in _tiles(h, hdeg):
        for c0, c1 in _tiles(w_, wdeg):
            a = _reached_by(r0, r1, kh, sh, dh, pt, ho)
            b = _reached_by(c0, c1, kw, sw, dw, pl, wo)
            assert a is not None and b is not None
            want_in[(r0, c0)] = ((r1 - r0, c1 - c0), (a[1] - a[0], b[1] - b[0]))
    assert len(inp.seen) == points
    assert {start: (tile, piece) for start, tile, piece, _ in inp.seen} == want_in
    # preact (or, without an activation, d_out standing in for it) windowed alike
    assert all(pre == piece for _, _, piece, pre in inp.seen)
    # and a window is less than the whole image wherever the axis splits it
    for _, _, piece in fwd.seen:
        assert piece[0] < h if hdeg > 1 else piece[0] <= h
        assert piece[1] < w_ if wdeg > 1 else piece[1] <= w_


POOL_CASES = {
    "max_same_overlapping": (Pool2D("max", 3, 1, "same"), (2, 15, 10, 2),
                             {"height": 3, "width": 2}),
    "avg_valid_strided_cf": (Pool2D("avg", (3, 2), (2, 2), "valid", "channels_first"),
                             (2, 3, 17, 8), {"height": 4, "channels": 1}),
}


@pytest.mark.parametrize("name", sorted(POOL_CASES))
def test_pool2d_points_receive_only_their_windows(monkeypatch: pytest.MonkeyPatch,
                                                  name: str) -> None:
    op, shape, config = POOL_CASES[name]
    cf = op.data_format == "channels_first"
    x = randn(RNG, *shape, dtype=np.float64)
    h, w_ = _hw(x, cf)
    ho, wo, _, (pt, _, pl, _) = op._geometry(TensorShape(shape))
    (kh, kw), (sh, sw) = op.pool_size, op.strides
    serial = run_op(op, [x])
    fwd = _Recorder(monkeypatch, pool_mod, "_window",
                    lambda g, xs, in_hw, origin, c, ho_, wo_:
                    (conv_mod.tile_start(origin, c), (ho_, wo_), xs.shape[1:3]))
    bwd = _Recorder(monkeypatch, pool_mod, "_input_grad_tile",
                    lambda dx, dy, origin, g, c, in_hw, out_hw:
                    (conv_mod.tile_start(origin_of(origin, "dx", 4), c), _hw(dx, c),
                     _hw(dy, c)))
    got = run_op(op, [x], serial.weights, output_grads=serial.output_grads,
                 executor=planned(config))
    compare(serial, got, f"{name} {config}")
    hdeg, wdeg = config.get("height", 1), config.get("width", 1)
    want_out = {}
    for o0, o1 in _tiles(ho, hdeg):
        for p0, p1 in _tiles(wo, wdeg):
            r = _reads(o0, o1, kh, sh, 1, pt, h)
            c = _reads(p0, p1, kw, sw, 1, pl, w_)
            want_out[(o0, p0)] = ((o1 - o0, p1 - p0), (r[1] - r[0], c[1] - c[0]))
    assert {start: (tile, tuple(piece)) for start, tile, piece in fwd.seen} == want_out
    want_in = {}
    for r0, r1 in _tiles(h, hdeg):
        for c0, c1 in _tiles(w_, wdeg):
            a = _reached_by(r0, r1, kh, sh, 1, pt, ho)
            b = _reached_by(c0, c1, kw, sw, 1, pl, wo)
            if a is not None and b is not None:
                want_in[(r0, c0)] = ((r1 - r0, c1 - c0), (a[1] - a[0], b[1] - b[0]))
    got_in = {start: (tile, piece) for start, tile, piece in bwd.seen}
    # a tile no window reaches (rows a strided "valid" pool skips) gets a 1-row dummy piece
    assert {k: v for k, v in got_in.items() if k in want_in} == want_in


def test_reach_spans_match_brute_force() -> None:
    """`Reach.span` (what the executor slices) against the brute-force window arithmetic, for
    many geometries and tilings, both directions."""
    for size in (5, 7, 16):
        for k, s, d in ((1, 1, 1), (3, 1, 1), (3, 2, 1), (2, 3, 1), (3, 1, 2), (3, 2, 3)):
            for padding in ("valid", "same"):
                try:
                    out, pad, _ = out_size_and_pads(size, k, s, d, padding, "t", "k")
                except ValueError:
                    continue
                fwd = Reach(out, size, k, s, d, pad, True)
                bwd = Reach(size, out, k, s, d, pad, False)
                for deg in range(1, 5):
                    for i, (o0, o1) in enumerate(_tiles(out, deg)):
                        assert fwd.tile_span(len(_tiles(out, deg)), i) == _reads(
                            o0, o1, k, s, d, pad, size), (size, k, s, d, padding, deg, i)
                    for i, (r0, r1) in enumerate(_tiles(size, deg)):
                        want = _reached_by(r0, r1, k, s, d, pad, out)
                        lo, hi = bwd.tile_span(len(_tiles(size, deg)), i)
                        if want is None:
                            assert hi - lo == 1  # a dummy position, never read
                        else:
                            assert (lo, hi) == want, (size, k, s, d, padding, deg, i)


def test_windowed_launches_are_issued_per_spatial_tile() -> None:
    """A launch reading an argument through windows is issued as one launch per tile of the
    windowed axes (each over the other axes' points); the others stay one launch."""
    op = Conv2D(2, 3, padding="same")
    s = TensorShape((4, 8, 8, 3))
    fwd = op.forward([s], True)[0]
    assert isinstance(fwd.args["x"], Windowed)
    degrees = {"sample": 2, "out": 1, "in": 1, "height": 2, "width": 1}
    assert launch_boxes(fwd, degrees) == [((0, 0), (2, 1)), ((0, 1), (2, 2))]
    assert launch_boxes(fwd, {"sample": 2}) is None


def test_without_halo_reads_points_read_the_image_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    """`halo_reads = False`: one launch, every point reads the input whole (the kernels tell a
    whole piece from a window by its size), and the results are the same."""
    op, shape, config = CONV_CASES["same_2x2"]
    x = randn(RNG, *shape, dtype=np.float64)
    serial = run_op(op, [x])

    def make(*args: Any, **kwargs: Any) -> Any:
        ex = planned(config)(*args, **kwargs)
        ex.halo_reads = False
        return ex

    fwd = _Recorder(monkeypatch, conv_mod, "_forward_into",
                    lambda x, k, b, out, g, c, start, in_hw: _hw(x, c))
    got = run_op(op, [x], serial.weights, output_grads=serial.output_grads, executor=make)
    compare(serial, got, f"whole reads {config}")
    assert fwd.seen == [shape[1:3]] * 4
