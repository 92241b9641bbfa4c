"""Which router keys this pod advertises, derived from the engine's block events (pure state, no I/O).

Engine blocks and router chunks do not line up: an engine block holds `block_size` tokens (vLLM on CPU: a multiple
of 32; SGLang: a page, often 1 token) while the router hashes the prompt in chunks of `chunk_tokens` (16) counted from
the prompt's first token. So each engine block is placed in its sequence through its parent link (a block whose
parent is None starts at token 0; otherwise it starts where its parent ended), and the block "produces" every chunk
that ends inside it. The tokens of a chunk that straddles blocks come from the parent's carry: the tokens after the
parent's last chunk boundary (fewer than `chunk_tokens`), kept per block for exactly this. A block whose parent is
unknown (stored before outrider started and not replayed, or removed already) cannot be placed; it and its
descendants are skipped and counted, never guessed.

The same router key (16 identical tokens anywhere in any sequence: the router's hash has no chaining) can be
produced by several engine blocks, so each advertised key carries a reference count and is deleted from Redis only
when the last engine block producing it is removed. A block stored again (vLLM re-announces blocks reused from its
prefix cache) refreshes its keys' timestamps and changes no count. Keys of blocks cached for a LoRA adapter are
advertised under the adapter's name, which is the model name a request for that adapter carries; blocks that name
only a numeric `lora_id` (old wire format) cannot be attributed and are skipped.

Under data parallelism every rank has its own cache and its own event stream: blocks are tracked per rank (a
parent is looked up in its own rank; two ranks may hold blocks of the same hash), while the reference counts of
the advertised keys are the pod's, over all ranks. So a block removed on one rank leaves its keys advertised while
another rank still holds a block producing them, and `AllBlocksCleared` (or a lost stream) on one rank forgets
only that rank's blocks.

Output for the writer: `pending` (key -> timestamp to write, or None to delete) and `full_resync` (rewrite this pod's
whole advertisement: after AllBlocksCleared, a restart, lost events, or when `pending` outgrows its bound).
"""

from __future__ import annotations

import dataclasses

from outrider.kvevents.hashing import chunk_hash
from outrider.kvevents.wire import AllBlocksCleared, BlockHash, BlockRemoved, BlockStored, Event

# An engine block, named as the engine names it: (medium, kv-cache group, engine block hash).
BlockKey = tuple[str | None, int, BlockHash]
# One advertised router key: (LoRA adapter name or None for the base model, chunk hash).
AdKey = tuple[str | None, int]

# Tracked engine blocks beyond which the state is dropped and rebuilt: far above any real engine's block count
# (a 80 GB GPU holds a few hundred thousand 16-token blocks) yet a hard ceiling on memory (~200 B per block).
DEFAULT_MAX_BLOCKS = 2_000_000
# Pending Redis changes beyond which they are dropped for one full resync (Redis is down or slower than the engine).
DEFAULT_MAX_PENDING = 200_000


@dataclasses.dataclass(slots=True)
class _Block:
    end: int  # tokens from the sequence start to the end of this block
    carry: tuple[int, ...]  # tokens after the last chunk boundary (len = end % chunk_tokens)
    ads: tuple[AdKey, ...]  # chunks that end inside this block


@dataclasses.dataclass(slots=True)
class _Ad:
    refs: int
    ts: int


@dataclasses.dataclass
class ApplyStats:
    """What one `apply` did, for metrics."""

    unplaced_blocks: int = 0  # parent unknown: cannot be placed in its sequence
    unattributed_blocks: int = 0  # LoRA blocks without an adapter name
    unknown_removals: int = 0  # BlockRemoved for a block never seen
    cleared: bool = False


class PodIndex:
    def __init__(
        self,
        chunk_tokens: int,
        *,
        max_blocks: int = DEFAULT_MAX_BLOCKS,
        max_pending: int = DEFAULT_MAX_PENDING,
    ) -> None:
        self.chunk_tokens = chunk_tokens
        self.max_blocks = max_blocks
        self.max_pending = max_pending
        self._ranks: dict[int, dict[BlockKey, _Block]] = {}  # data-parallel rank -> its blocks
        self._ads: dict[AdKey, _Ad] = {}
        self.pending: dict[AdKey, int | None] = {}
        self.full_resync = False
        self.overflows = 0  # times the state or the pending changes hit their bound

    @property
    def tracked_blocks(self) -> int:
        return sum(len(blocks) for blocks in self._ranks.values())

    @property
    def advertised(self) -> int:
        return len(self._ads)

    def snapshot(self) -> dict[AdKey, int]:
        """Every key this pod should advertise, with its timestamp."""
        return {k: ad.ts for k, ad in self._ads.items()}

    def clear(self) -> None:
        """Forget everything and ask for a full resync (which then deletes every field this pod owns)."""
        self._ranks.clear()
        self._ads.clear()
        self.pending.clear()
        self.full_resync = True

    def clear_rank(self, rank: int) -> None:
        """Forget one rank's blocks (its keys stay while another rank's blocks produce them) and ask for a full
        resync, which writes exactly what the other ranks still hold."""
        for block in self._ranks.pop(rank, {}).values():
            for ad in block.ads:
                entry = self._ads[ad]
                entry.refs -= 1
                if entry.refs == 0:
                    del self._ads[ad]
        self.pending.clear()
        self.full_resync = True

    def take(self) -> tuple[bool, dict[AdKey, int | None]]:
        """Hand the pending work to the writer: (full resync?, changes). Resets both."""
        full, changes = self.full_resync, self.pending
        self.full_resync, self.pending = False, {}
        return full, changes

    def apply(self, events: tuple[Event, ...] | list[Event], ts: int, rank: int = 0) -> ApplyStats:
        """Apply one batch of `rank`'s events, stamped `ts` (unix seconds)."""
        stats = ApplyStats()
        for event in events:
            if isinstance(event, BlockStored):
                self._stored(self._ranks.setdefault(rank, {}), event, ts, stats)
            elif isinstance(event, BlockRemoved):
                self._removed(self._ranks.get(rank, {}), event, stats)
            elif isinstance(event, AllBlocksCleared):
                self.clear_rank(rank)
                stats.cleared = True
        if self.tracked_blocks > self.max_blocks:
            self.overflows += 1
            self.clear()
        elif len(self.pending) > self.max_pending and not self.full_resync:
            # The snapshot taken at the resync carries every live key; the pending deletes are covered by its
            # scan, so nothing is lost by dropping them, and memory stays bounded while Redis is away.
            self.overflows += 1
            self.pending.clear()
            self.full_resync = True
        return stats

    def _stored(self, blocks: dict[BlockKey, _Block], event: BlockStored, ts: int, stats: ApplyStats) -> None:
        c = self.chunk_tokens
        ns = (event.medium, event.group_idx or 0)  # formats without groups have one: group 0
        n = len(event.block_hashes)
        tokens = event.token_ids
        if n == 0:
            return
        if len(tokens) == n * event.block_size:
            size = event.block_size
        elif n == 1:
            size = len(tokens)  # a single (possibly partial) block: its tokens are the truth
        else:
            stats.unplaced_blocks += n  # token count does not fit the blocks: cannot cut them apart safely
            return
        if event.lora_name is None and event.lora_id is not None:
            stats.unattributed_blocks += n
            return
        model = event.lora_name
        if event.parent_block_hash is None:
            start, carry = 0, tuple[int, ...]()
        else:
            parent = blocks.get((*ns, event.parent_block_hash))
            if parent is None:
                stats.unplaced_blocks += n
                return
            start, carry = parent.end, parent.carry
        for i, engine_hash in enumerate(event.block_hashes):
            block_tokens = tokens[i * size : (i + 1) * size]
            key: BlockKey = (*ns, engine_hash)
            known = blocks.get(key)
            if known is not None:
                for ad in known.ads:  # stored again: refresh the timestamp only
                    self._ads[ad].ts = ts
                    self._mark(ad, ts)
                start, carry = known.end, known.carry
                continue
            stream = carry + block_tokens
            full = len(stream) // c
            ads = tuple((model, chunk_hash(stream[j * c : (j + 1) * c])) for j in range(full))
            carry = stream[full * c :]
            start += len(block_tokens)
            blocks[key] = _Block(start, carry, ads)
            for ad in ads:
                entry = self._ads.get(ad)
                if entry is None:
                    self._ads[ad] = _Ad(1, ts)
                else:
                    entry.refs += 1
                    entry.ts = ts
                self._mark(ad, ts)

    def _removed(self, blocks: dict[BlockKey, _Block], event: BlockRemoved, stats: ApplyStats) -> None:
        for engine_hash in event.block_hashes:
            block = blocks.pop((event.medium, event.group_idx or 0, engine_hash), None)
            if block is None:
                stats.unknown_removals += 1
                continue
            for ad in block.ads:
                entry = self._ads[ad]
                entry.refs -= 1
                if entry.refs == 0:
                    del self._ads[ad]
                    self._mark(ad, None)

    def _mark(self, ad: AdKey, ts: int | None) -> None:
        if not self.full_resync:
            self.pending[ad] = ts
