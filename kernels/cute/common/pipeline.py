"""Shared-memory pipelines on mbarriers: TMA producer -> warpgroup consumers.

A TMA pipeline stage is *full* once the producer's ``arrive_and_expect_tx`` and the TMA bytes have
landed, and *empty* once one elected lane of every consumer warp has released it. The whole
producer warp calls ``producer_acquire`` and issues the copies (both elect a single lane inside).
"""

import cutlass.cute as cute
from cutlass import pipeline
from cutlass.pipeline import PipelineState, PipelineTmaAsync, PipelineUserType, make_pipeline_state

WARP_SIZE = 32

__all__ = [
    "PipelineState",
    "PipelineTmaAsync",
    "consumer_state",
    "make_tma_pipeline",
    "producer_state",
]


def make_tma_pipeline(
    barrier_storage: cute.Pointer, num_stages: int, tx_bytes: int, num_consumer_threads: int
) -> PipelineTmaAsync:
    """A TMA-fed pipeline whose consumers are ``num_consumer_threads`` threads (whole warps).

    ``defer_sync``: the kernel fences the barrier inits and syncs the CTA once for all pipelines.
    """
    assert num_consumer_threads % WARP_SIZE == 0
    return PipelineTmaAsync.create(
        barrier_storage=barrier_storage,
        num_stages=num_stages,
        producer_group=pipeline.CooperativeGroup(pipeline.Agent.Thread, 1),
        # consumer_release arrives from one lane per warp
        consumer_group=pipeline.CooperativeGroup(pipeline.Agent.Thread, num_consumer_threads // WARP_SIZE),
        tx_count=tx_bytes,
        defer_sync=True,
    )


def producer_state(num_stages: int) -> PipelineState:
    return make_pipeline_state(PipelineUserType.Producer, num_stages)


def consumer_state(num_stages: int) -> PipelineState:
    return make_pipeline_state(PipelineUserType.Consumer, num_stages)
