"""CuTe-DSL device code: shared building blocks in ``common``, one class per (op, direction, arch)."""
