"""Launchers for the CuTe-DSL kernels: config choice, compile on fake tensors, compile cache.

Importing this package does not import cutlass; each launcher module does so itself.
"""
