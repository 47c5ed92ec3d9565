"""Random streams for purification and attacks: a torch.Generator, or counter-based draws.

Every random number the engine uses is drawn per image as ``rng.rand(n_images, k)``. Two
sources implement it:

- :class:`GeneratorRandom` wraps a ``torch.Generator`` (or the global RNG);
- :class:`CounterRandom` hashes ``(seed, image index, call counter, slot)``, so an image's
  draws depend only on the global seed, its index in the data set and how far the run has
  got, never on its batch-mates, the batch size, the process rank or the device. Two
  objects with the same seed replay the same draws: that is how a "deterministic"
  evaluation gives attacker and defender the same randomness, and an EOT evaluation
  fresh randomness (another seed).

All draws are made on the CPU in float32 and moved by the caller.
"""
from __future__ import annotations

from typing import Union

import torch

_MASK32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2**32 for x < 2**32 without int64 overflow (split x into 16-bit halves)."""
    low = (x & 0xFFFF) * c
    high = ((x >> 16) * (c & 0xFFFF)) << 16
    return (low + high) & _MASK32


def hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer mixer ("lowbias32", Wellons): int64 tensor in [0, 2**32) -> same range."""
    x = x & _MASK32
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


class GeneratorRandom:
    """Draws from a ``torch.Generator`` (None: the global RNG), in call order."""

    def __init__(self, generator: torch.Generator | None = None):
        self.generator = generator

    def rand(self, n: int, k: int, *, shared: bool = False) -> torch.Tensor:
        """Uniform [0, 1) of shape [n, k]; ``shared`` repeats one row for all n."""
        rows = 1 if shared else n
        return torch.rand(rows, k, generator=self.generator).expand(n, k)

    def randn(self, n: int, k: int) -> torch.Tensor:
        return torch.randn(n, k, generator=self.generator)


class CounterRandom:
    """Counter-based draws keyed by ``(seed, indices[i], call, slot)``.

    Args:
        seed: the global seed of the run.
        indices: Tensor[N] int64, each image's index in the data set.
    """

    def __init__(self, seed: int, indices: torch.Tensor):
        indices = torch.as_tensor(indices, dtype=torch.int64).cpu()
        if indices.dim() != 1:
            raise ValueError(f"indices must be 1-D [N], got shape {tuple(indices.shape)}")
        self.seed, self.indices, self.calls = int(seed), indices, 0

    def _bits(self, n: int, k: int, shared: bool) -> torch.Tensor:
        if n != self.indices.numel() and not shared:
            raise ValueError(f"CounterRandom holds {self.indices.numel()} image indices, asked for {n} rows")
        self.calls += 1
        keys = torch.full((1,), -1, dtype=torch.int64) if shared else self.indices
        h = hash32(torch.tensor(self.seed & _MASK32) ^ hash32(keys & _MASK32))
        h = hash32(h ^ hash32(torch.tensor(self.calls)))
        h = hash32(h[:, None] ^ hash32(torch.arange(k, dtype=torch.int64)))
        return h.expand(n, k)

    def rand(self, n: int, k: int, *, shared: bool = False) -> torch.Tensor:
        # 24 high bits -> float32 in [0, 1) exactly, as torch.rand does.
        return (self._bits(n, k, shared) >> 8).to(torch.float32) / float(1 << 24)

    def randn(self, n: int, k: int) -> torch.Tensor:
        """Box-Muller from two uniform draws."""
        u1 = self.rand(n, k).clamp_min(2 ** -24)
        u2 = self.rand(n, k)
        return torch.sqrt(-2 * torch.log(u1)) * torch.cos(2 * torch.pi * u2)

    def fork(self, offset: int) -> "CounterRandom":
        """An independent stream for the same images (another seed derived from this one)."""
        return CounterRandom(int(hash32(torch.tensor(self.seed + offset))), self.indices)


Random = Union[GeneratorRandom, CounterRandom]


def as_random(source: "torch.Generator | Random | None") -> Random:
    """Accept a torch.Generator, None (global RNG) or a random source."""
    if isinstance(source, (GeneratorRandom, CounterRandom)):
        return source
    if source is None or isinstance(source, torch.Generator):
        return GeneratorRandom(source)
    raise TypeError(f"generator must be a torch.Generator, GeneratorRandom or CounterRandom, got {type(source).__name__}")
