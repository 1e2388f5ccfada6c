"""Named hardware barriers (ids 1..15; 0 belongs to ``sync_threads``) and thin sync helpers."""

import enum

import cutlass.cute as cute
from cutlass import Int32

WARPGROUP_THREADS = 128


class NamedBarrierFwd(enum.IntEnum):
    """Barrier ids of the attention forward kernels."""

    EpilogueWG1 = 1  # one per consumer warpgroup: sO written -> TMA store issued
    EpilogueWG2 = enum.auto()
    EpilogueWG3 = enum.auto()
    WarpSchedulerWG1 = enum.auto()  # ping-pong: WG i waits on its id, arrives on the next one's
    WarpSchedulerWG2 = enum.auto()
    WarpSchedulerWG3 = enum.auto()
    TileFull = enum.auto()  # dynamic schedule (common/tile_scheduler.TileHandoff): next tile written to smem
    TileEmpty = enum.auto()  # ... and read by every consumer
    BiasSliceWG1 = enum.auto()  # bias_slice: one per consumer warpgroup, its rows of the query factors split
    BiasSliceWG2 = enum.auto()
    BiasSliceWG3 = enum.auto()


class NamedBarrierBwd(enum.IntEnum):
    """Barrier ids of the attention backward kernels."""

    EpilogueWG1 = 1
    EpilogueWG2 = enum.auto()
    EpilogueWG3 = enum.auto()
    WarpSchedulerWG1 = enum.auto()
    WarpSchedulerWG2 = enum.auto()
    WarpSchedulerWG3 = enum.auto()
    PdS = enum.auto()
    dQFull = enum.auto()
    dQEmpty = enum.auto()


def barrier_sync(barrier_id: int | Int32, num_threads: int) -> None:
    cute.arch.barrier(barrier_id=barrier_id, number_of_threads=num_threads)


def barrier_arrive(barrier_id: int | Int32, num_threads: int) -> None:
    cute.arch.barrier_arrive(barrier_id=barrier_id, number_of_threads=num_threads)
