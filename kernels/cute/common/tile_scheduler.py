"""Static persistent tile scheduler: CTA ``c`` of ``G`` takes tiles c, c + G, c + 2G, ...

Every warp role walks the same sequence independently, so no scheduling traffic is needed. With ``G``
the number of tiles (``grid(max_ctas)`` with ``max_ctas`` at least that) every CTA takes one tile and the
hardware hands out the tiles in this order as SMs free up. With a ``TileHandoff`` (below) the CTAs
take their tiles after the first from a global counter instead, in the same order, as each finishes
one (FA3's dynamic persistent schedule). The
linear order is chosen so that concurrently running CTAs share K/V in L2 and, where the work per
query block differs, do the most work first:

- plain: all query blocks of one (batch, head) back to back, heads in order.
- ``longest_first`` (causal / right-windowed attention, where the last query blocks see the most
  keys): the (batch, head) pairs are cut into sections of ``heads_per_section`` consecutive heads,
  sized by the host so that their K/V fit in L2 together; within a section the tiles run last query
  block first, the section's heads side by side. Sections start on whole GQA groups, so the query
  heads of one K/V head stay in one section.
"""

import cutlass
import cutlass.cute as cute
from cutlass import Int32, const_expr

from .barriers import barrier_arrive, barrier_sync
from .dynamic import RuntimeFields


class PersistentTileScheduler(RuntimeFields):
    def __init__(
        self,
        num_m_blocks: Int32,
        num_heads: Int32,
        num_batch: Int32,
        longest_first: bool,
        heads_per_section: Int32 | None = None,
    ):
        self.num_m_blocks = num_m_blocks
        self.num_heads = num_heads
        self.num_batch = num_batch
        self.longest_first = longest_first
        # None: one section of every (batch, head) pair
        self.heads_per_section = heads_per_section

    def num_tiles(self) -> Int32:
        return self.num_m_blocks * self.num_heads * self.num_batch

    def grid(self, max_ctas: Int32) -> tuple:
        return (cutlass.min(self.num_tiles(), max_ctas), 1, 1)

    @cute.jit
    def first_tile(self) -> Int32:
        return Int32(cute.arch.block_idx()[0])

    @cute.jit
    def next_tile(self, tile: Int32) -> Int32:
        return tile + Int32(cute.arch.grid_dim()[0])

    @cute.jit
    def is_valid(self, tile: Int32) -> cutlass.Boolean:
        return tile < self.num_tiles()

    @cute.jit
    def decode(self, tile: Int32) -> tuple[Int32, Int32, Int32]:
        """tile -> (m_block, head, batch)."""
        m_block = Int32(0)
        bh = Int32(0)
        if const_expr(self.longest_first):
            num_bh = self.num_heads * self.num_batch
            section_heads = num_bh
            if const_expr(self.heads_per_section is not None):
                section_heads = cutlass.max(cutlass.min(self.heads_per_section, num_bh), 1)
            section_tiles = section_heads * self.num_m_blocks
            first_bh = tile // section_tiles * section_heads
            # the last section may hold fewer heads
            heads_here = cutlass.min(section_heads, num_bh - first_bh)
            within = tile % section_tiles
            m_block = self.num_m_blocks - 1 - within // heads_here
            bh = first_bh + within % heads_here
        else:
            m_block = tile % self.num_m_blocks
            bh = tile // self.num_m_blocks
        return m_block, bh % self.num_heads, bh // self.num_heads


class TileHandoff(RuntimeFields):
    """Dynamic persistent schedule: after its first tile (its CTA index) a CTA takes the next one from a global
    counter, ``grid + atomicAdd(counter, 1)``, so the tiles still go out in the scheduler's order, each to the CTA
    that frees up first.

    The producer warp claims the next tile when it starts loading one (the atomic's latency hides under the
    loads), and hands it to the consumer warpgroups through a one-word shared-memory slot between two named
    barriers: the consumers arrive on ``empty`` once they have read the slot (and once at the start), the
    producer waits on it before writing the slot and arrives on ``full`` after; the consumers wait on ``full``
    after each tile. The consumers arrive on ``empty`` only while the tile they read is valid, so every arrival
    has its wait and none is left at exit.
    """

    def __init__(
        self,
        counter: cute.Tensor,  # int32 in global memory (its first element), zero at launch
        slot: cute.Tensor,  # (1,) int32 in shared memory
        full_id: int,
        empty_id: int,
        num_threads: int,  # the producer warp and every consumer thread
    ):
        self.counter = counter
        self.slot = slot
        self.full_id = full_id
        self.empty_id = empty_id
        self.num_threads = num_threads

    @cute.jit
    def claim(self) -> Int32:
        """Producer warp, as it starts loading a tile: lane 0 claims the next one (the counter's old value; 0 in the
        other lanes). Not read until ``publish``, so the atomic's latency hides under the tile's loads."""
        claimed = Int32(0)
        if cute.arch.lane_idx() == 0:
            claimed = cute.arch.atomic_add(self.counter.iterator, Int32(1), sem="relaxed", scope="gpu")
        return claimed

    @cute.jit
    def publish(self, claimed: Int32) -> Int32:
        """Producer warp, after the tile's loads: the claimed tile (``grid`` + the counter's old value), written to
        the slot once the consumers have read it, and returned to every lane."""
        tile = cute.arch.shuffle_sync(claimed, 0) + Int32(cute.arch.grid_dim()[0])
        barrier_sync(self.empty_id, self.num_threads)
        if cute.arch.lane_idx() == 0:
            self.slot[0] = tile
        barrier_arrive(self.full_id, self.num_threads)
        return tile

    @cute.jit
    def start(self) -> None:
        """Consumers, before their first tile: the slot is free."""
        barrier_arrive(self.empty_id, self.num_threads)

    @cute.jit
    def receive(self, num_tiles: Int32) -> Int32:
        """Consumers, after each tile: the next one (invalid when the work is done)."""
        barrier_sync(self.full_id, self.num_threads)
        tile = self.slot[0]
        if tile < num_tiles:
            barrier_arrive(self.empty_id, self.num_threads)
        return tile
