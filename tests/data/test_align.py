"""Timestamp alignment, on streams whose aligned values are worked out by hand.

Scenario: 2 s of data on a 10 Hz clock (ticks 0.0, 0.1, ..., 1.9)
  frames  25 fps  t = k / 25,  k = 0..49,   value k (as a (2, 2) "image")
  audio   100 Hz  t = k / 100, k = 0..199,  value (k, 2k, -k)
  sensor  1 Hz    t = 0, 1, 2,              value 20, 21, 22
"""

from __future__ import annotations

import pytest
import torch

from mmfurnace.data.align import align_nearest, align_streams, align_window, make_clock
from mmfurnace.errors import InputError


@pytest.fixture
def clock() -> torch.Tensor:
    return make_clock(0.0, 2.0, 10.0)


@pytest.fixture(params=[torch.float64, torch.float32])
def frames(request: pytest.FixtureRequest) -> tuple[torch.Tensor, torch.Tensor]:
    # float32 timestamps carry ~1e-7 s rounding; ties and tolerances must still hold.
    k = torch.arange(50)
    return k.to(request.param) / 25.0, k.float()[:, None, None].expand(50, 2, 2).clone()


@pytest.fixture
def audio() -> tuple[torch.Tensor, torch.Tensor]:
    k = torch.arange(200, dtype=torch.float64)
    return k / 100.0, torch.stack([k, 2 * k, -k], dim=1).float()


@pytest.fixture
def sensor() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64), torch.tensor([20.0, 21.0, 22.0])


def test_make_clock() -> None:
    clock = make_clock(0.0, 2.0, 10.0)
    assert clock.dtype == torch.float64
    torch.testing.assert_close(
        clock, torch.arange(20, dtype=torch.float64) / 10, rtol=0, atol=1e-15
    )
    torch.testing.assert_close(
        make_clock(0.5, 1.0, 4.0), torch.tensor([0.5, 0.75], dtype=torch.float64)
    )
    assert make_clock(0.0, 1.0, 3.0).shape == (3,)  # end is excluded
    for bad in ((1.0, 1.0, 10.0), (0.0, 1.0, 0.0), (2.0, 1.0, 5.0)):
        with pytest.raises(InputError, match="clock needs"):
            make_clock(*bad)


def test_frames_nearest_breaks_ties_to_the_earlier_frame(clock, frames) -> None:
    aligned, valid = align_nearest(*frames, clock)
    # Tick j/10 sits on frame 2.5 j: exact for even j, a tie between two frames for odd j.
    expected = torch.tensor(
        [0, 2, 5, 7, 10, 12, 15, 17, 20, 22, 25, 27, 30, 32, 35, 37, 40, 42, 45, 47]
    ).float()
    assert aligned.shape == (20, 2, 2)
    torch.testing.assert_close(aligned, expected[:, None, None].expand(20, 2, 2), rtol=0, atol=0)
    assert bool(valid.all())


def test_frames_nearest_tolerance_is_inclusive(clock, frames) -> None:
    # Odd ticks are 0.02 s from their frame: kept at tolerance 0.02, dropped at 0.01.
    _, valid = align_nearest(*frames, clock, tolerance=0.02)
    assert bool(valid.all())
    aligned, valid = align_nearest(*frames, clock, tolerance=0.01)
    even = torch.arange(20) % 2 == 0
    torch.testing.assert_close(valid, even)
    assert bool((aligned[~even] == 0).all())
    torch.testing.assert_close(aligned[even, 0, 0], 5.0 * torch.arange(10).float(), rtol=0, atol=0)


def test_sensor_nearest_with_tolerance(clock, sensor) -> None:
    aligned, valid = align_nearest(*sensor, clock, tolerance=0.25)
    #              0.0 .. 0.2 | 0.3 .. 0.7 | 0.8 .. 1.2 | 1.3 .. 1.7 | 1.8 1.9
    expected_valid = [1] * 3 + [0] * 5 + [1] * 5 + [0] * 5 + [1] * 2
    expected = [20.0] * 3 + [0.0] * 5 + [21.0] * 5 + [0.0] * 5 + [22.0] * 2
    torch.testing.assert_close(valid, torch.tensor(expected_valid).bool())
    torch.testing.assert_close(aligned, torch.tensor(expected), rtol=0, atol=0)


def test_audio_windows_mean_and_max(clock, audio) -> None:
    # window 0.1: tick j/10 pools audio windows k = 10j-5 .. 10j+5 (both ends inclusive),
    # clipped to k >= 0 at the first tick.
    mean, valid = align_window(*audio, clock, window=0.1)
    centre = torch.tensor([2.5] + [10.0 * j for j in range(1, 20)])
    torch.testing.assert_close(
        mean, torch.stack([centre, 2 * centre, -centre], 1), rtol=0, atol=1e-5
    )
    assert bool(valid.all())
    top, _ = align_window(*audio, clock, window=0.1, reduce="max")
    last = torch.tensor([10.0 * j + 5 for j in range(20)])  # the latest window has the largest k
    first = torch.tensor([0.0] + [10.0 * j - 5 for j in range(1, 20)])  # max of -k: earliest
    torch.testing.assert_close(top, torch.stack([last, 2 * last, -first], 1), rtol=0, atol=0)
    # window 0.05: k = 10j-2 .. 10j+2, mean 10j; first tick pools k = 0, 1, 2.
    narrow, _ = align_window(*audio, clock, window=0.05)
    centre = torch.tensor([1.0] + [10.0 * j for j in range(1, 20)])
    torch.testing.assert_close(narrow[:, 0], centre, rtol=0, atol=1e-5)


def test_sensor_window_marks_empty_ticks_invalid(clock, sensor) -> None:
    pooled, valid = align_window(*sensor, clock, window=0.5)
    expected_valid = torch.tensor([1] * 3 + [0] * 5 + [1] * 5 + [0] * 5 + [1] * 2).bool()
    torch.testing.assert_close(valid, expected_valid)
    expected = torch.tensor([20.0] * 3 + [0.0] * 5 + [21.0] * 5 + [0.0] * 5 + [22.0] * 2)
    torch.testing.assert_close(pooled, expected, rtol=0, atol=0)


def test_window_mean_of_integer_values_is_float() -> None:
    ts = torch.tensor([0.0, 0.1, 0.2])
    pooled, valid = align_window(ts, torch.tensor([1, 2, 4]), torch.tensor([0.15]), window=0.1)
    assert pooled.dtype == torch.float32
    torch.testing.assert_close(pooled, torch.tensor([3.0]))
    top, _ = align_window(
        ts, torch.tensor([1, 2, 4]), torch.tensor([0.15]), window=0.1, reduce="max"
    )
    assert top.tolist() == [4]


def test_align_streams_combines_all_three(clock, frames, audio, sensor) -> None:
    streams = {"sensor": sensor, "frames": frames, "audio": audio}
    aligned, valid = align_streams(streams, clock, tolerance=0.25)
    assert list(aligned) == ["audio", "frames", "sensor"]
    assert {k: tuple(v.shape) for k, v in aligned.items()} == {
        "audio": (20, 3),
        "frames": (20, 2, 2),
        "sensor": (20,),
    }
    for name, (ts, vals) in streams.items():
        ref_values, ref_valid = align_nearest(ts, vals, clock, tolerance=0.25)
        torch.testing.assert_close(aligned[name], ref_values, rtol=0, atol=0)
        torch.testing.assert_close(valid[name], ref_valid)
    # Audio windows every 10 ms line up exactly with the ticks: tick j takes k = 10 j.
    torch.testing.assert_close(
        aligned["audio"][:, 0], 10.0 * torch.arange(20).float(), rtol=0, atol=0
    )
    pooled, pooled_valid = align_streams(streams, clock, method="window", window=0.5)
    torch.testing.assert_close(pooled["sensor"][:3], torch.tensor([20.0] * 3))
    assert int(pooled_valid["sensor"].sum()) == 10


def test_bad_streams_name_the_stream(clock, frames, sensor) -> None:
    unsorted = (torch.tensor([0.0, 2.0, 1.0]), torch.tensor([1.0, 2.0, 3.0]))
    with pytest.raises(InputError, match=r"stream 'sensor': timestamps are not sorted: t\[2\]=1"):
        align_streams({"frames": frames, "sensor": unsorted}, clock)
    short = (torch.tensor([0.0, 1.0]), torch.tensor([1.0, 2.0, 3.0]))
    with pytest.raises(InputError, match=r"stream 'gps': 2 timestamps but values of shape \(3,\)"):
        align_streams({"gps": short}, clock)
    empty = (torch.zeros(0), torch.zeros(0, 4))
    with pytest.raises(InputError, match=r"stream 'imu': stream is empty"):
        align_streams({"imu": empty}, clock, method="window", window=0.1)
    with pytest.raises(InputError, match=r"needs window="):
        align_streams({"sensor": sensor}, clock, method="window")
    with pytest.raises(
        InputError, match=r"unknown alignment method 'linear'; known: nearest, window"
    ):
        align_streams({"sensor": sensor}, clock, method="linear")
    with pytest.raises(InputError, match=r"unknown reduce 'median'; known: max, mean"):
        align_window(*sensor, clock, window=0.1, reduce="median")
