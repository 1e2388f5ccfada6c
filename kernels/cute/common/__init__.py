"""Building blocks shared by the CuTe-DSL kernels (arch-neutral unless the module name says otherwise).

barriers        named barrier ids (IntEnum per kernel family) and sync/arrive helpers
pipeline        TMA producer -> warpgroup consumer pipelines on mbarriers
tile_scheduler  static persistent scheduler (longest-first or K/V-sharing order), the dynamic schedule's tile handoff
mask            causal / sliding-window visibility, boundary-tile test and masking
softmax         online softmax in base 2 (lazy rescale threshold, FMA exp2 share)
fast_exp2       polynomial exp2 on the FMA pipe
lowrank         float32 low-rank bias product added to a score accumulator in FMAs
layouts         wgmma accumulator views: (row, col) and as the A operand of the next wgmma
packed          float32 accumulator tiles kept in register order (16-byte stores, vector atomics, read back)
sm90            Hopper: warp roles and register budgets, tiled MMAs, swizzled smem layouts, wgmma discipline,
                the bulk (non-tensor) reduce-add
dynamic         lets helper objects holding runtime values cross runtime control flow
"""
