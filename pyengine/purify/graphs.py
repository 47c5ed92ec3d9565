"""The K-step purification loop captured as one CUDA graph, replayed per call.

A purify call on the GPU is thousands of small kernel launches (K steps of a forward and an
input-gradient backward); replaying them from a graph removes the launch and Python
overhead, which dominates at small batches. A graph holds fixed addresses, so everything
that changes between calls enters through static buffers copied in before each replay: the
input, the start point and the view draws of all K steps (drawn on the host exactly as the
eager loop would draw them, so both paths see the same randomness).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable

import torch

# step(xk, x0, draws) -> L_s at xk (detached); moves xk in place.
DescentStep = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class CapturedDescent:
    """K steps of ``step`` on a batch shaped like ``x0`` with draws shaped like ``draws``.

    Args:
        step: one in-place descent step; must launch only CUDA work (no host syncs).
        x0: Tensor[N, 3, H, W] on a CUDA device, the shape every replay takes.
        draws: Tensor[K, ...], the per-step randomness of one call.
    """

    def __init__(self, step: DescentStep, x0: torch.Tensor, draws: torch.Tensor):
        self.x0, self.xk, self.draws = x0.clone(), x0.clone(), draws.clone()
        steps = draws.shape[0]
        self.trace = torch.empty(steps, x0.shape[0], device=x0.device)
        # Warm up on a side stream, as CUDA graph capture requires: cuDNN picks its
        # algorithms and autograd starts its device thread outside the capture.
        side = torch.cuda.Stream(x0.device)
        side.wait_stream(torch.cuda.current_stream(x0.device))
        with torch.cuda.stream(side):
            for _ in range(2):
                step(self.xk, self.x0, self.draws[0])
        torch.cuda.current_stream(x0.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            for k in range(steps):
                self.trace[k] = step(self.xk, self.x0, self.draws[k])

    def replay(self, x0: torch.Tensor, start: torch.Tensor, draws: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (x_K Tensor[N, 3, H, W], L_s before each step Tensor[K, N]), fresh tensors."""
        self.x0.copy_(x0)
        self.xk.copy_(start)
        self.draws.copy_(draws)
        self.graph.replay()
        return self.xk.clone(), self.trace.clone()


class GraphCache:
    """Captured loops keyed by input shape, least recently used dropped beyond ``capacity``."""

    def __init__(self, capacity: int = 8):
        self.capacity, self._graphs = capacity, OrderedDict()

    def get(self, key, build: Callable[[], CapturedDescent]) -> CapturedDescent:
        if key in self._graphs:
            self._graphs.move_to_end(key)
        else:
            self._graphs[key] = build()
            if len(self._graphs) > self.capacity:
                self._graphs.popitem(last=False)
        return self._graphs[key]

    def clear(self) -> None:
        self._graphs.clear()

    def __len__(self) -> int:
        return len(self._graphs)
