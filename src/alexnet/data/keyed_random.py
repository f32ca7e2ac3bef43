"""Counter-based random numbers: a sample's randomness depends only on (seed, epoch, index).

So a run gives the same result whatever the batch composition, the number of data-loader workers or DDP
ranks, and wherever it was interrupted and resumed: augmentation (crops, flips, colour noise) and dropout
masks are all drawn from a sample's key. Keys and uniforms are integer arithmetic (no float64: MPS has none),
identical on every device. Normals take a log and a cosine of two uniforms, which devices may round differently in
the last bit; the training loop takes its normals from the CPU on every device (``Draws`` of an epoch).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch

_MASK = (1 << 31) - 1
_MUL = 0x45D9F3B  # < 2**27, so products stay inside int64


def _mix(x: torch.Tensor) -> torch.Tensor:
    x = ((x ^ (x >> 16)) * _MUL) & _MASK
    x = ((x ^ (x >> 16)) * _MUL) & _MASK
    return x ^ (x >> 16)


def _mix_int(x: int) -> int:
    """``_mix`` on a Python int (no tensor, no host sync, nothing for torch.compile to break on)."""
    x = ((x ^ (x >> 16)) * _MUL) & _MASK
    x = ((x ^ (x >> 16)) * _MUL) & _MASK
    return x ^ (x >> 16)


def _to_unit(h: torch.Tensor) -> torch.Tensor:
    """31-bit hashes -> U[0, 1) in float32, exactly (the top 24 bits)."""
    return (h >> 7).float().mul_(1.0 / (1 << 24))


def keys(seed: int, epoch: int, index: torch.Tensor) -> torch.Tensor:
    """One 31-bit key per sample (int64 tensor like ``index``)."""
    base = _mix_int((seed * 1_000_003 + epoch) & _MASK)
    return _mix((index.long() & _MASK) ^ base)


def _stream(stream: int) -> int:
    return _mix_int(stream + 1)


class Draws:
    """Uniforms of several streams for a set of keys (a batch, or a whole epoch's order), drawn together as one
    grid: ``uniform``, ``randint`` and ``normals`` given a Draws read its columns (the same values: a stream's draw
    is its own hash of the key) and draw the streams it lacks as from the key. ``normal_streams``: normals drawn
    ahead too (Box-Muller on uniforms of streams s and s + 1000, from the grid when it has them). A training
    batch's augmentation takes up to 13 streams: hashed one by one, a store's batch took 182 ops (each a launch on a
    GPU), as one grid 123; the training loop takes its batches' rows of an epoch's Draws (``rows``), taken once per
    epoch with its order (data/batches.py), so a step hashes nothing."""

    def __init__(self, key: torch.Tensor, streams: Sequence[int], normal_streams: Sequence[int] = ()) -> None:
        self.key, self.columns = key, {s: i for i, s in enumerate(streams)}
        self.grid = _to_unit(_mix(key.long()[:, None] ^ _constants(tuple(streams), key.device)))
        self.normal_columns: dict[int, int] = {}
        self.normal_grid: torch.Tensor | None = None
        if normal_streams:
            self.normal_grid = normals(self, list(normal_streams))  # the pairs from the grid, or hashed apart
            self.normal_columns = {s: i for i, s in enumerate(normal_streams)}

    def _like(self, key: torch.Tensor, grid: torch.Tensor, normal_grid: torch.Tensor | None) -> Draws:
        out = object.__new__(Draws)
        out.key, out.columns, out.grid = key, self.columns, grid
        out.normal_columns, out.normal_grid = self.normal_columns, normal_grid
        return out

    def to(self, device: torch.device) -> Draws:
        """The same keys and draws on ``device`` (copied, not drawn again)."""
        if torch.device(device) == self.key.device:
            return self
        ng = self.normal_grid
        return self._like(self.key.to(device), self.grid.to(device), None if ng is None else ng.to(device))

    def rows(self, span: slice) -> Draws:
        """The keys of ``span`` and their draws: views, no op computes anything."""
        ng = self.normal_grid
        return self._like(self.key[span], self.grid[span], None if ng is None else ng[span])

    def columns_of(self, streams: Sequence[int]) -> torch.Tensor | None:
        """(B, len(streams)) of the grid, or None when a stream is not in it."""
        return _columns(self.grid, self.columns, streams)

    def normals_of(self, streams: Sequence[int]) -> torch.Tensor | None:
        """(B, len(streams)) of the normals drawn ahead, or None when a stream is not among them."""
        return None if self.normal_grid is None else _columns(self.normal_grid, self.normal_columns, streams)


def _columns(grid: torch.Tensor, columns: dict[int, int], streams: Sequence[int]) -> torch.Tensor | None:
    cols = [columns.get(s) for s in streams]
    if None in cols:
        return None
    first = cols[0]
    assert first is not None
    if cols == list(range(first, first + len(cols))):
        return grid[:, first : first + len(cols)]
    return grid[:, cols]


Key = torch.Tensor | Draws  # per-sample keys, or their draws for a batch


def uniform(key: Key, stream: int) -> torch.Tensor:
    """U[0, 1) per key; different ``stream`` numbers give independent draws."""
    if isinstance(key, Draws):
        got = key.columns_of([stream])
        return got[:, 0] if got is not None else uniform(key.key, stream)
    return _to_unit(_mix(key ^ _stream(stream)))


def uniform_grid(key: torch.Tensor, stream: int, n: int, offset: int = 0) -> torch.Tensor:
    """(len(key), n): U[0, 1) per key and unit ``offset .. offset + n - 1`` (dropout masks: a unit's draw
    does not depend on which slice of the units a process holds)."""
    units = _mix(torch.arange(offset, offset + n, device=key.device, dtype=torch.int64) ^ _stream(stream))
    return _to_unit(_mix(key.long()[:, None] ^ units[None, :]))


def randint(key: Key, stream: int, high: int) -> torch.Tensor:
    """Integers in [0, high) per key."""
    return (uniform(key, stream) * high).long().clamp_(max=high - 1)


def normal(key: torch.Tensor, stream: int) -> torch.Tensor:
    """N(0, 1) per key (Box-Muller)."""
    return normals(key, [stream])[:, 0]


def normals(key: Key, streams: list[int]) -> torch.Tensor:
    """(len(key), len(streams)): ``normal(key, s)`` for each stream, drawn together (a few ops for all: a training
    step's host work on a GPU is its ops' launches). Box-Muller on the uniforms of streams s and s + 1000."""
    ahead = key.normals_of(streams) if isinstance(key, Draws) else None
    if ahead is not None:
        return ahead
    pairs = [*streams, *(s + 1000 for s in streams)]
    u = key.columns_of(pairs) if isinstance(key, Draws) else None
    if u is None:
        k = key.key if isinstance(key, Draws) else key
        u = _to_unit(_mix(k.long()[:, None] ^ _constants(tuple(pairs), k.device)))
    u1, u2 = u[:, : len(streams)].clamp(min=1e-7), u[:, len(streams) :]
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * math.pi * u2)


@functools.cache  # one per (streams, device): no host-to-device copy every step
def _constants(streams: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """(1, k): the streams' hash constants, for a grid of draws."""
    with torch.inference_mode(False):  # cached: made during evaluation, it must still serve training
        return torch.tensor([_stream(s) for s in streams], dtype=torch.int64, device=device)[None, :]


def seed_of(seed: int, epoch: int, index: int) -> int:
    """A plain integer seed for per-image transforms in data-loader workers."""
    return int(keys(seed, epoch, torch.tensor([index]))[0])


def seeded_sample(n: int, limit: int, seed: int = 0) -> torch.Tensor:
    """A fixed random subset of ``range(n)`` of at most ``limit`` indices, sorted (statistics, figures):
    the same images whichever command asks."""
    if n <= limit:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:limit].sort().values
