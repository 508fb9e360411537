"""vidmem: compression. Pure PyTorch token containers, methods (stage 1 and 2), registry, rolling memory.

Importing this package is cheap: methods register on first use of the registry
(``compression.registry.build_method`` / ``list_methods``) or on ``import compression.methods``.
"""
