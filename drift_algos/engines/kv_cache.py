"""Key/value caches of the transformers engine's own decode loop.

:class:`RoomyLayer` is one attention layer's cache for a batch, with room reserved ahead: a decode step writes its
token's keys and values in place, where transformers' ``DynamicLayer`` concatenates (copying the whole cache every
step: 37% of a decode step at batch 128 on the embedded model, measured on the 2-core CPU). Rows can be dropped
(finished sequences stop costing compute) and leading columns that only padding uses trimmed.

:class:`PrefixCache` keeps the keys and values of token sequences between calls, so the next turn of a conversation
(whose prompt starts with the previous turn's prompt and reply) computes only its new tokens.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache, CacheLayerMixin


class RoomyLayer(CacheLayerMixin):
    """One layer's keys and values for a batch, ``(B, H, capacity, D)`` buffers filled up to ``length`` columns."""

    is_sliding = False
    is_croppable = False

    def __init__(self, key_buffer: torch.Tensor, value_buffer: torch.Tensor, length: int):
        super().__init__()
        self.key_buffer = key_buffer  # (B, H, capacity, D)
        self.value_buffer = value_buffer  # (B, H, capacity, D)
        self.length = length
        self.dtype, self.device = key_buffer.dtype, key_buffer.device
        self.is_initialized = True
        self._views()

    def _views(self) -> None:
        self.keys = self.key_buffer[:, :, : self.length]  # (B, H, length, D)
        self.values = self.value_buffer[:, :, : self.length]

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        raise AssertionError("RoomyLayer is created with its buffers")

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        end = self.length + key_states.shape[-2]
        if end > self.key_buffer.shape[2]:  # out of room: grow (not expected: the loop reserves enough)
            grow = max(end - self.key_buffer.shape[2], self.key_buffer.shape[2])
            pad = self.key_buffer.new_zeros(*self.key_buffer.shape[:2], grow, self.key_buffer.shape[3])
            self.key_buffer = torch.cat([self.key_buffer, pad], dim=2)
            self.value_buffer = torch.cat([self.value_buffer, pad.clone()], dim=2)
        self.key_buffer[:, :, self.length : end] = key_states
        self.value_buffer[:, :, self.length : end] = value_states
        self.length = end
        self._views()
        return self.keys, self.values

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.length + query_length, 0

    def get_seq_length(self) -> int:
        return self.length

    def get_max_length(self) -> int:
        return -1

    def select(self, rows: torch.Tensor, first: int, room: int) -> None:
        """Keep only ``rows`` (indices, in that order) and the columns from ``first`` on, with ``room`` free columns."""
        length = self.length - first
        shape = (len(rows), self.key_buffer.shape[1], length + room, self.key_buffer.shape[3])
        keys, values = self.key_buffer.new_empty(shape), self.value_buffer.new_empty(shape)
        keys[:, :, :length] = self.key_buffer[rows, :, first : self.length]
        values[:, :, :length] = self.value_buffer[rows, :, first : self.length]
        self.key_buffer, self.value_buffer, self.length = keys, values, length
        self._views()


def roomy_cache(layers: list[RoomyLayer]) -> Cache:
    """A transformers :class:`Cache` over ``layers`` (one per decoder layer)."""
    return Cache(layers=layers)


@dataclass
class _Entry:
    ids: list[int]
    kv: list[tuple[torch.Tensor, torch.Tensor]]  # per layer, each (H, len(ids), D)
    nbytes: int
    hashes: list[int]
    key: int


class PrefixCache:
    """Keys and values of token sequences from earlier calls, found by their longest common prefix with a prompt.

    Sequences are indexed by the hashes of their leading blocks of ``block`` tokens; a lookup walks the prompt's
    blocks and then matches token by token against the deepest entry found, so a prompt that shares only part of a
    sequence (a group's shared prompt, the tokenizer merging differently at the end of a reply) still reuses that
    part. An entry that is a prefix of a newer one is dropped (the newer holds all it held). Least recently used
    entries go when the cache holds more than ``max_bytes``. The keys and values belong to the weights that computed
    them: :meth:`clear` when they change.
    """

    def __init__(self, max_bytes: int, *, block: int = 16):
        if max_bytes < 0:
            raise ValueError(f"prefix cache size must be >= 0, got {max_bytes}")
        self.max_bytes = max_bytes
        self.block = block
        self.entries: OrderedDict[int, _Entry] = OrderedDict()  # by id, least recently used first
        self.index: dict[int, dict[int, None]] = {}  # block-prefix hash -> entry ids (an ordered set)
        self.nbytes = 0
        self.hits = self.lookups = self.reused_tokens = 0
        self._next = 0

    def _hashes(self, ids: Sequence[int]) -> list[int]:
        out, h = [], 0
        for start in range(0, len(ids) - self.block + 1, self.block):
            h = hash((h, tuple(ids[start : start + self.block])))
            out.append(h)
        return out

    def _deepest(self, ids: Sequence[int]) -> tuple[_Entry | None, list[int]]:
        best, seen = None, []
        for h in self._hashes(ids):
            ids_at = self.index.get(h)
            if not ids_at:
                break
            seen.extend(ids_at)
            best = self.entries[next(reversed(ids_at))]
        return best, seen

    def lookup(self, ids: Sequence[int], *, limit: int) -> tuple[_Entry | None, int]:
        """The entry sharing the longest prefix with ``ids`` (at least one block) and that prefix's length, at most
        ``limit`` tokens; ``(None, 0)`` if none."""
        self.lookups += 1
        if self.max_bytes == 0:
            return None, 0
        entry, _ = self._deepest(ids[:limit])
        if entry is None:
            return None, 0
        common = 0
        for a, b in zip(entry.ids, ids[:limit], strict=False):
            if a != b:
                break
            common += 1
        if common == 0:
            return None, 0
        self.hits += 1
        self.reused_tokens += common
        self.entries.move_to_end(entry.key)
        return entry, common

    def insert(self, ids: list[int], kv: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Keep ``kv`` (per layer, each ``(H, len(ids), D)``) as the keys and values of ``ids``."""
        nbytes = sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in kv)
        if nbytes > self.max_bytes or len(ids) < self.block:
            return
        _, seen = self._deepest(ids)
        for key in dict.fromkeys(seen):  # entries this one contains are redundant
            old = self.entries.get(key)
            if old is not None and len(old.ids) <= len(ids) and ids[: len(old.ids)] == old.ids:
                self._remove(key)
        key, self._next = self._next, self._next + 1
        entry = _Entry(list(ids), kv, nbytes, self._hashes(ids), key)
        self.entries[key] = entry
        for h in entry.hashes:
            self.index.setdefault(h, {})[key] = None
        self.nbytes += nbytes
        while self.nbytes > self.max_bytes:
            self._remove(next(iter(self.entries)))

    def _remove(self, key: int) -> None:
        entry = self.entries.pop(key)
        for h in entry.hashes:
            ids_at = self.index.get(h)
            if ids_at is not None:
                ids_at.pop(key, None)
                if not ids_at:
                    del self.index[h]
        self.nbytes -= entry.nbytes

    def clear(self) -> None:
        self.entries.clear()
        self.index.clear()
        self.nbytes = 0
