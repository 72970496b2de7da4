"""KV caches, preallocated once and written in place.

One verb, as in mlx-lm: `k, v, kpos = cache.update_and_fetch(k, v, positions)` stores the
new keys/values of a chunk and returns everything attention should look at, with the
position of every key (so the caller builds masks from positions, whatever the storage
order). `truncate(n)` forgets positions >= n (undo, prefix reuse) and says whether what
remains is still complete.

Layouts: keys and values are [n_kv, capacity, head_dim] float32, so that attention is one
batched matmul per layer: q [n_kv, T*group, hd] @ K.transpose(0, 2, 1).
"""
from __future__ import annotations

import numpy as np


class FullCache:
    """Every position 0..n_ctx-1 (global attention layers)."""

    def __init__(self, n_kv: int, n_ctx: int, head_dim: int):
        # np.zeros: the OS commits pages only as positions are written
        self.k = np.zeros((n_kv, n_ctx, head_dim), dtype=np.float32)
        self.v = np.zeros((n_kv, n_ctx, head_dim), dtype=np.float32)
        self.capacity = n_ctx
        self.offset = 0                                   # positions 0..offset-1 are stored

    def update_and_fetch(self, k: np.ndarray, v: np.ndarray, positions: np.ndarray):
        """k, v: [n_kv, T, hd] for consecutive `positions` starting at self.offset."""
        T = k.shape[1]
        p0 = int(positions[0])
        assert p0 == self.offset and p0 + T <= self.capacity, "cache written out of order"
        self.k[:, p0:p0 + T] = k
        self.v[:, p0:p0 + T] = v
        self.offset = p0 + T
        return self.k[:, :self.offset], self.v[:, :self.offset], np.arange(self.offset)

    def truncate(self, n: int) -> bool:
        self.offset = min(self.offset, n)
        return True


class SlidingCache:
    """A ring buffer for a sliding-window layer: position p lives in slot p % capacity.

    capacity = window + slack: the window is what attention needs; the slack keeps older
    positions a little longer so that a rewind of up to `slack` tokens (undo, regenerate,
    a request sharing most of the previous prefix) finds its window intact.

    Every slot is stored twice, at s and s + capacity, so that the window of a decode
    step, `window` consecutive positions, is one contiguous slice: no mask, no copy."""

    def __init__(self, n_kv: int, window: int, head_dim: int, slack: int):
        self.window = window
        self.capacity = window + slack
        self.k = np.zeros((n_kv, 2 * self.capacity, head_dim), dtype=np.float32)
        self.v = np.zeros((n_kv, 2 * self.capacity, head_dim), dtype=np.float32)
        self.pos = np.full(self.capacity, -1, dtype=np.int64)   # position held by each slot
        self.offset = 0

    def _window(self, lo: int, hi: int) -> slice:
        """Slots of positions lo..hi-1 (at most `capacity` of them) as one slice."""
        a = lo % self.capacity
        return slice(a, a + hi - lo)

    def update_and_fetch(self, k: np.ndarray, v: np.ndarray, positions: np.ndarray):
        T = k.shape[1]
        p0 = int(positions[0])
        lo = max(0, p0 - self.window + 1)          # the oldest key the chunk's first query sees
        if T == 1:
            # one new key only evicts one older than the window: write, then read the window
            self._write(k, v, positions)
            w = self._window(lo, p0 + 1)
            return self.k[:, w], self.v[:, w], np.arange(lo, p0 + 1)
        # a chunk's first queries need older keys that its own last rows may evict:
        # attend to those (one slice of the ring) plus the chunk, then store the chunk
        w = self._window(lo, p0)
        K = np.concatenate([self.k[:, w], k], axis=1)
        V = np.concatenate([self.v[:, w], v], axis=1)
        kpos = np.concatenate([np.arange(lo, p0), positions])
        self._write(k, v, positions)
        return K, V, kpos

    def _write(self, k, v, positions):
        keep = slice(max(0, len(positions) - self.capacity), None)   # the last `capacity`
        slots = positions[keep] % self.capacity
        for at in (slots, slots + self.capacity):
            self.k[:, at] = k[:, keep]
            self.v[:, at] = v[:, keep]
        self.pos[slots] = positions[keep]
        self.offset = int(positions[-1]) + 1

    def truncate(self, n: int) -> bool:
        """Forget positions >= n; True if positions n-window+1..n-1 are all still held."""
        self.pos[self.pos >= n] = -1
        self.offset = min(self.offset, n)
        need = np.arange(max(0, n - self.window + 1), n)
        return bool(np.all(self.pos[need % self.capacity] == need))


def _slack(cfg, il: int, n_ctx: int) -> int | None:
    """A sliding layer's ring slack, or None for a full cache (global layers, and sliding
    ones whose window holds the whole context)."""
    if cfg.is_sliding(il) and cfg.sliding_window < n_ctx:
        return min(cfg.sliding_window, n_ctx - cfg.sliding_window)
    return None


def make_caches(cfg, n_ctx: int) -> list[FullCache | SlidingCache]:
    """One cache per layer: full for global layers, a ring for sliding ones."""
    caches: list[FullCache | SlidingCache] = []
    for il in range(cfg.n_layer):
        slack = _slack(cfg, il, n_ctx)
        if slack is not None:
            caches.append(SlidingCache(cfg.n_kv, cfg.sliding_window, cfg.head_dim, slack))
        else:
            caches.append(FullCache(cfg.n_kv, n_ctx, cfg.head_dim))
    return caches


def cache_bytes(cfg, n_ctx: int) -> int:
    """Bytes of keys and values that make_caches(cfg, n_ctx) allocates (float32; a ring
    stores each slot twice)."""
    total = 0
    for il in range(cfg.n_layer):
        slack = _slack(cfg, il, n_ctx)
        positions = n_ctx if slack is None else 2 * (cfg.sliding_window + slack)
        total += 2 * cfg.n_kv * positions * cfg.head_dim * 4
    return total
