"""Benchmarks of homoscope: measures, extraction and streaming, each timed side by side with baselines.

Run ``python -m benchmarks`` (full) or ``python -m benchmarks --quick`` (under ten minutes on two CPU
cores). Every case runs in its own subprocess so that peak memory (``ru_maxrss``) belongs to that case
alone; results go to ``reports/benchmarks/results.csv`` and ``reports/benchmarks/README.md``.
``python -m benchmarks.gpu`` runs the same cases on a CUDA device.
"""
