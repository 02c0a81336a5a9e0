"""The planner: where every tensor of a model lives on a machine, how much memory each device
needs, how fast decoding can be, and why. Pure: facts in, a `Plan` out (see `search`)."""

from moecli.planner.search import (
    CUDA_ALIGNMENT,
    CUDA_COMPUTE_SLACK,
    DEFAULT_BATCH,
    DEFAULT_CTX,
    DEFAULT_MARGIN,
    DEFAULT_RUNTIME_OVERHEAD,
    DEFAULT_UBATCH,
    EFFICIENCY,
    GPU,
    KV_QUANT_LADDER,
    MATRIX_ROW_PADDING,
    MIN_CTX,
    OFFLOAD_COPY_SLACK,
    OP_OFFLOAD_MIN_BATCH,
    RAM_RESERVE,
    Alternative,
    DecodeEstimate,
    MemoryBreakdown,
    Placement,
    Plan,
    TensorPlacement,
    Wishes,
    evaluate,
    neighbours,
    parse_ctx,
    plan,
)

__all__ = [
    "CUDA_ALIGNMENT", "CUDA_COMPUTE_SLACK", "DEFAULT_BATCH", "DEFAULT_CTX", "DEFAULT_MARGIN", "DEFAULT_RUNTIME_OVERHEAD",
    "DEFAULT_UBATCH", "EFFICIENCY", "GPU", "KV_QUANT_LADDER", "MATRIX_ROW_PADDING", "MIN_CTX", "OFFLOAD_COPY_SLACK",
    "OP_OFFLOAD_MIN_BATCH", "RAM_RESERVE", "Alternative", "DecodeEstimate", "MemoryBreakdown", "Placement", "Plan",
    "TensorPlacement", "Wishes", "evaluate", "neighbours", "parse_ctx", "plan",
]
