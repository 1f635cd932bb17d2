#!/usr/bin/env python
"""Train and evaluate the plugin's RetinaNet with Detectron2's trainer and COCO evaluator.

    python train_net.py --config-file configs/retinanet_R50.yaml --num-gpus 8
    python train_net.py --config-file configs/retinanet_R50.yaml --eval-only \
        MODEL.WEIGHTS model_final.pth
    # no GPU: 2 CPU workers
    python train_net.py --config-file configs/synthetic/retinanet_R18_synthetic.yaml --num-gpus 2
    # 2 machines of 8 GPUs: on machine R (0 and 1), HOST being machine 0's address
    python train_net.py --config-file configs/retinanet_R50.yaml --num-gpus 8 \
        --num-machines 2 --machine-rank R --dist-url tcp://HOST:29500
    # torchrun: ranks from the environment, nothing spawned again (several machines: --nnodes,
    # --node-rank / --rdzv-endpoint on each, see the README)
    torchrun --nproc-per-node 8 train_net.py --config-file configs/retinanet_R50.yaml

Without GPUs, ``--num-gpus N`` (or ``torchrun --nproc-per-node N``) starts N CPU processes that
train together over GLOO, and a config that asks for ``MODEL.DEVICE cuda`` runs on the CPU (with a
warning). How the workers are started: ``retinanet_plugin.engine.launching``.
"""

import logging

from detectron2.engine import default_argument_parser, default_setup
from detectron2.evaluation import verify_results
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from retinanet_plugin.data import check_dataset_files
from retinanet_plugin.engine import (
    CheckedDetectionCheckpointer,
    RetinaNetPluginTrainer,
    config_from_file,
)
from retinanet_plugin.engine.launching import launch_from_args

logger = logging.getLogger("retinanet_plugin")


def setup(args):
    """Config from the YAML and the command-line overrides, with the plugin's keys; logging and
    output folder."""
    cfg, warnings = config_from_file(args.config_file, args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    # the plugin's own log lines (data fix-ups, resume fallbacks) go to the console and
    # OUTPUT_DIR/log.txt too
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="retinanet_plugin")
    for warning in warnings:
        logger.warning(warning)
    return cfg


def main(args):
    cfg = setup(args)
    check_dataset_files(
        list(cfg.DATASETS.TEST) + ([] if args.eval_only else list(cfg.DATASETS.TRAIN))
    )
    if args.eval_only:
        model = RetinaNetPluginTrainer.build_model(cfg)
        checkpointer = CheckedDetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR)
        checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        results = RetinaNetPluginTrainer.test(cfg, model)
        if cfg.TEST.AUG.ENABLED:
            results.update(RetinaNetPluginTrainer.test_with_TTA(cfg, model))
        if comm.is_main_process():
            verify_results(cfg, results)
        return results
    trainer = RetinaNetPluginTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def invoke_main() -> None:
    args = default_argument_parser().parse_args()
    print("Command Line Args:", args)
    launch_from_args(main, args)


if __name__ == "__main__":
    invoke_main()
