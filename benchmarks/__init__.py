"""Benchmarks of the plugin against Detectron2, torchvision and fvcore, and the harness they share.

Scripts (each writes its results under ``benchmarks/results/`` and prints a table):

- ``bench_retinanet.py``: the plugin's RetinaNet against Detectron2's and torchvision's (time,
  memory);
- ``profile_retinanet.py``: where a step of the plugin and of Detectron2 spends its time
  (``torch.profiler``);
- ``bench_focal_loss.py``: the compiled focal loss op against fvcore's and torchvision's losses;
- ``bench_coco_eval.py``: faster-coco-eval against pycocotools.

Run them from the repository root, as modules or as files (both import the harness as
``benchmarks.harness``; a script run as a file first imports ``bootstrap.py``, beside it, which says
how):

    python -m benchmarks.bench_retinanet --device cpu
    python benchmarks/bench_retinanet.py --device cpu

``harness/`` holds what more than one script (or test) uses: inputs, peer models, the random-weight
calibration, weights, memory meters, child processes, timing, machine facts and report files. The
modules beside the scripts are one script's own parts: ``retinanet_child.py`` and
``retinanet_report.py`` (``bench_retinanet.py``), ``coco_eval_data.py`` (``bench_coco_eval.py`` and
``tests/test_fast_coco_eval.py``).
"""
