"""Which layer widths run fast on this device: what ``GateOptions(width_multiple="auto")`` picks.

Vector units and GEMM kernels process a matmul's width in tiles, so a width just past a tile
boundary pays for a tile it barely uses: measured on this project's CPU, a 256-row Linear ran
169 -> 86 in 51 us and 176 -> 88 in 42 us. Whether that happens, and at which multiple, is the
device's (and its library's) business, so it is measured, not assumed:

1. **Probe.** A pair of Linears ``features -> w -> features`` (what a kept hidden width ``w``
   costs: one layer's output, the next one's input) is timed at every width of
   :data:`PROBE_WIDTHS` on the device, interleaved so drift hits all widths alike; each
   width's median over the repeats.
2. **Choice.** For each candidate multiple ``n`` (:data:`CANDIDATES`), every probed width
   ``w`` that is not a multiple is compared with its cut ``n * (w // n)``: the time saved
   (``t(w) / t(cut)``) over the width given up (``w / cut``). Without tiles the two are about
   equal (time grows with width); the mean over the widths is the gain of cutting to ``n``.
   It must reach :data:`MIN_GAIN` (a gain in the timing noise would cost width for nothing);
   of the multiples within :data:`NEAR_BEST` of the best gain, the smallest is taken: it gives
   up the least width. Pairing each width with its own cut, and the mean (the cuts to 4 mix
   widths that land on a multiple of 8 with widths that do not, where a median jumps between
   the two), keep the choice stable where comparing all multiples with all other widths
   flipped between runs (this project's CPU, 1 thread: 8 in each of 4 probes, gain
   1.084-1.094; at 2 threads the gains are 1.05-1.09 and the choice varies, see
   ``docs/results/widths.md``).

Measured once per process for each (device, dtype, threads); the sparse model records what it
used (its state_dict), so a resumed run rounds as the first one did.
"""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn

#: multiples considered (1, any width, is the answer when none gains enough)
CANDIDATES = (2, 4, 8, 16, 32)
#: probed hidden widths: every width of two 64-wide tiles past 64, so each candidate up to 32
#: has at least four multiples among them
PROBE_WIDTHS = tuple(range(64, 192))
#: probe rows and outer width (a mid-sized MLP layer's batch and fan-in)
PROBE_ROWS = 256
PROBE_FEATURES = 256
#: timed forwards per width (after one warm-up)
REPEATS = 7
#: the time saved over the width given up, of the best multiple, must reach this
MIN_GAIN = 1.05
#: multiples whose gain (over 1) is within this fraction of the best's are as good; the
#: smallest wins. 0.25 took 4 where 8 gained a little more (1.07 against 1.08 on this CPU), and
#: the compacted MLPs then ran slower at batch 256 than cut to 8 on 3 of 4 workloads at the same
#: metric (docs/results/widths.md): the small gain differences are real
NEAR_BEST = 0.1
_CACHE: dict[tuple, int] = {}


def choose_width_multiple(seconds: dict[int, float], candidates: tuple[int, ...] = CANDIDATES,
                          min_gain: float = MIN_GAIN) -> int:
    """The width multiple that probe timings favour (module docstring, step 2).

    Args:
        seconds: probe time at each width (positive).
        candidates: multiples to consider.
        min_gain: the least gain (time saved over width given up) a multiple must show.

    Returns:
        The chosen multiple, or 1 when no candidate gains ``min_gain``.

    Example:
        >>> # widths off a multiple of 8 run 25% slower per unit (a remainder loop)
        >>> times = {w: w * (1.25 if w % 8 else 1.0) * 1e-6 for w in range(64, 192)}
        >>> choose_width_multiple(times)
        8
        >>> choose_width_multiple({w: w * 1e-6 for w in range(64, 192)})  # no tiles
        1
    """
    gains = {n: gain for n in candidates if (gain := cut_gain(seconds, n)) is not None}
    best = max(gains.values(), default=0.0)
    if best < min_gain:
        return 1
    return min(n for n, g in gains.items() if g - 1 >= (1 - NEAR_BEST) * (best - 1))


def cut_gain(seconds: dict[int, float], n: int) -> float | None:
    """The mean, over the probed widths that are not multiples of ``n`` (and whose cut was
    probed), of the time saved by cutting to the multiple below over the width given up;
    None when no width qualifies."""
    ratios = []
    for w, t in seconds.items():
        cut = n * (w // n)
        if cut != w and seconds.get(cut, 0) > 0 and t > 0:
            ratios.append((t / seconds[cut]) / (w / cut))
    return statistics.fmean(ratios) if ratios else None


def probe_seconds(device: torch.device, dtype: torch.dtype = torch.float32,
                  widths: tuple[int, ...] = PROBE_WIDTHS, repeats: int = REPEATS
                  ) -> dict[int, float]:
    """Seconds of the probe (module docstring, step 1) at each width on ``device``."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    x = torch.randn(PROBE_ROWS, PROBE_FEATURES, device=device, dtype=dtype)
    pairs = {w: (nn.Linear(PROBE_FEATURES, w).to(device, dtype),
                 nn.Linear(w, PROBE_FEATURES).to(device, dtype)) for w in widths}
    samples: dict[int, list[float]] = {w: [] for w in widths}
    with torch.no_grad():
        for round_ in range(repeats + 1):
            for w in widths if round_ % 2 else reversed(widths):
                first, second = pairs[w]
                sync()
                start = time.perf_counter()
                second(first(x))
                sync()
                if round_:  # the first round warms up
                    samples[w].append(time.perf_counter() - start)
    return {w: statistics.median(v) for w, v in samples.items()}


def measured_width_multiple(device: torch.device, dtype: torch.dtype = torch.float32) -> int:
    """The width multiple for ``device``: probed and chosen once per process (and dtype and
    thread count), as ``GateOptions(width_multiple="auto")`` uses it.

    Example:
        >>> import torch
        >>> measured_width_multiple(torch.device("cpu")) in (1, *CANDIDATES)
        True
    """
    key = (str(device), str(dtype), torch.get_num_threads())
    if key not in _CACHE:
        _CACHE[key] = choose_width_multiple(probe_seconds(device, dtype))
    return _CACHE[key]
