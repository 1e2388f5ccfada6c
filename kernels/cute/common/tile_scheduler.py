"""Static persistent tile scheduler: CTA ``c`` of ``G`` takes tiles c, c + G, c + 2G, ...

Every warp role walks the same sequence independently, so no scheduling traffic is needed. With ``G``
the number of tiles (``grid(max_ctas)`` with ``max_ctas`` at least that) every CTA takes one tile and the
hardware hands out the tiles in this order as SMs free up. The
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
