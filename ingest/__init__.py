"""vidmem: ingest. Stream sources (PyAV, aiortc), sampler, chunker, reconnects and stats.

Public entry points: ``ingest.runner.StreamIngest`` and the value objects in ``ingest.entities``.
This package imports nothing else of vidmem.
"""
