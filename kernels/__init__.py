"""Device code: CuTe-DSL and Triton kernels. No torch, no environment reads, no caching here."""
