"""The benchmark harness: what the benchmark scripts, the tests and ``tools/gpu`` share.

- ``inputs``: seeded synthetic images and boxes, each model's input format, argument parsers for
  sizes;
- ``peers``: the models compared (the plugin, Detectron2's RetinaNet, torchvision's) from one
  config;
- ``calibration``: random weights that behave like trained ones (the one home of that calibration:
  the benchmarks, the parity/checkpoint/export tests and ``tools/gpu/parity.py`` use it);
- ``weights``: the benchmarks' seeded, calibrated weights, saved once and loaded into every model;
- ``memory``: peak memory above a baseline (CUDA allocator statistics, or the process's resident
  set);
- ``children``: child processes that report results line by line (each measurement in a fresh
  process);
- ``timing``: synchronised wall-clock and CUDA-event timing, medians and quartiles, pooled rounds;
- ``machine``: the machine, its software and the checkout a result came from;
- ``report``: result files written atomically, and plain-text tables.
"""

import os

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RESULTS_DIR = os.path.join(REPO_ROOT, "benchmarks", "results")
