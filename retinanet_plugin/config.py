"""Config keys of the plugin: new keys live under ``MODEL.RETINANET_PLUGIN``, and under ``DATASETS``
for datasets given by files and how images are read.

The plugin reuses Detectron2's own RetinaNet keys (``MODEL.RETINANET.*``,
``MODEL.ANCHOR_GENERATOR.*``, ``MODEL.FPN.*``, ``MODEL.RESNETS.*``) with their Detectron2 meaning,
so a Detectron2 RetinaNet YAML works unchanged once the three component names point at the plugin's
registrations.
"""

from detectron2.config import CfgNode as CN


def add_retinanet_plugin_config(cfg):
    """Add the plugin's keys (with their defaults) to a Detectron2 config, in place, and return it.

    Calling it twice is harmless: a config that already has the node is left as it is.
    """
    if "RETINANET_PLUGIN" in cfg.MODEL:
        return cfg
    node = CN()
    _add_architecture_keys(node)
    _add_loss_keys(node)
    _add_training_keys(node)
    _add_execution_keys(node)
    _add_test_time_augmentation_keys(node)
    cfg.MODEL.RETINANET_PLUGIN = node
    _add_dataset_keys(cfg)
    return cfg


def _add_architecture_keys(node: CN) -> None:
    """The head, the pyramid and anchor labelling."""
    # Name of the head in RETINANET_PLUGIN_HEAD_REGISTRY (retinanet_plugin.modeling.head).
    node.HEAD_NAME = "RetinaNetPluginHead"
    # Input of the stride-2 P6 conv: "res5" (C5, as Detectron2 does) or "p5" (the FPN's P5, a paper
    # option).
    node.P6P7_INPUT = "res5"
    # Whether a ground-truth box with no anchor above the foreground IoU threshold still gets the
    # anchors that overlap it best as foreground (Detectron2 hard-codes True; the paper does not
    # say).
    node.ALLOW_LOW_QUALITY_MATCHES = True
    # Most IoU values (ground-truth boxes x anchors) that anchor labelling holds at once; anchors
    # are matched in blocks of MATCHING_CHUNK_ELEMENTS // #boxes, so images with hundreds of boxes
    # need no [G, R] IoU matrix. The result does not depend on it
    # (retinanet_plugin.modeling.anchor_labeling).
    node.MATCHING_CHUNK_ELEMENTS = 4194304


def _add_loss_keys(node: CN) -> None:
    """The losses and their normaliser."""
    # How both losses are normalised:
    #   "ema":   exponential moving average of the number of foreground anchors per worker, counted
    #            over all workers (all-reduced, divided by the number of workers). Detectron2's
    #            normaliser, except that Detectron2 counts on each GPU alone.
    #   "batch": the paper's plain count of foreground anchors in the batch (over all workers, at
    #            least 1).
    node.LOSS_NORMALIZER = "ema"
    # Start value and momentum of the "ema" normaliser (Detectron2: 100 and 0.9).
    node.NORMALIZER_EMA_INIT = 100.0
    node.NORMALIZER_EMA_MOMENTUM = 0.9
    # Classification loss implementation: "op" (the custom sigmoid focal loss kernel,
    # retinanet_plugin._C) or "reference" (the composite PyTorch expression on a one-hot target, as
    # fvcore writes it).
    node.FOCAL_LOSS_IMPL = "op"
    # Classification loss: "focal" (the paper's sigmoid focal loss,
    # MODEL.RETINANET.FOCAL_LOSS_GAMMA/ALPHA) or "quality_focal" (Generalized Focal Loss, Li et al.
    # 2020: the positive class's target is the IoU of the anchor's predicted box with its ground
    # truth, modulated by |target - p|^QUALITY_FOCAL_LOSS_BETA; no alpha). Either one uses the
    # implementation FOCAL_LOSS_IMPL names. The box loss is MODEL.RETINANET.BBOX_REG_LOSS_TYPE
    # (smooth_l1, giou, diou, ciou), as in Detectron2.
    node.CLASSIFICATION_LOSS = "focal"
    node.QUALITY_FOCAL_LOSS_BETA = 2.0


def _add_training_keys(node: CN) -> None:
    """The optimizer, mixed precision and the ground truth a training image gives."""
    # Optimizer built by the plugin's trainer (train_net.py): "SGD" (Detectron2's: SOLVER.MOMENTUM,
    # NESTEROV) or "AdamW" (betas 0.9/0.999), both with SOLVER.BASE_LR, WEIGHT_DECAY*,
    # BIAS_LR_FACTOR and CLIP_GRADIENTS.
    node.OPTIMIZER = "SGD"
    # Autocast dtype when SOLVER.AMP.ENABLED: "auto" (float16 with a gradient scaler on CUDA,
    # bfloat16 on the CPU), "float16" or "bfloat16". The losses are accumulated in float32 either
    # way.
    node.AMP_DTYPE = "auto"
    # Take MODEL.RETINANET.NUM_CLASSES from the training data: the number of thing_classes of
    # DATASETS.TRAIN (all training datasets must have the same classes), set when the config is read
    # (engine.config_from_file) and by the trainer. False: NUM_CLASSES as given, and a dataset with
    # another class count is an error naming both.
    node.NUM_CLASSES_FROM_DATA = False
    # Ground-truth boxes with iscrowd 1 (COCO crowd regions, Pascal VOC "difficult" objects) in
    # training:
    #   "ignore": the anchors such a box would match (IoU above the background threshold, or its
    #             best anchor) are left out of the classification loss (neither object nor
    #             background); other anchors are labelled as usual.
    #   "drop":   removed, as Detectron2's DatasetMapper does, so the anchors on them are
    #             background.
    node.CROWD_BOXES = "ignore"
    # A box that an augmentation cuts (INPUT.CROP: random crops) and of which less than this
    # fraction of its area is left inside the image is ignored like a crowd box (a sliver of an
    # object is neither object nor background); boxes with more left are clipped and trained on,
    # boxes with nothing left are dropped. 0: clip and keep all.
    node.CROP_MIN_VISIBLE_FRACTION = 0.5
    # An exponential moving average of the weights (engine/weight_averaging.py), for short training
    # runs from scratch: updated after each iteration with decay DECAY * (1 - exp(-t / RAMP_ITERS))
    # at iteration t; checkpoints carry it, and after the last iteration the model takes it (the
    # final checkpoint and the final evaluation are the average).
    node.EMA = CN()
    node.EMA.ENABLED = False
    node.EMA.DECAY = 0.999
    node.EMA.RAMP_ITERS = 200.0


def _add_execution_keys(node: CN) -> None:
    """How the network runs: the results are the same up to float rounding."""
    # In eval mode, run each convolution of the backbone that a FrozenBatchNorm2d follows
    # (MODEL.RESNETS.NORM "FrozenBN", and the frozen stages of other norms) as one convolution with
    # the norm folded into its weight and bias (retinanet_plugin.modeling.frozen_bn_folding).
    # Training, the parameters and checkpoints are unchanged.
    node.FOLD_FROZEN_BN = True
    # Memory format of the activations: "channels_last" (NHWC, which oneDNN's CPU convolutions run
    # faster; the head's outputs then need no copy to become [N, H*W*A, K]), "contiguous" (NCHW,
    # PyTorch's and Detectron2's) or "auto" (channels_last when MODEL.DEVICE is the CPU). It applies
    # at inference (eval mode) and, in training, under mixed precision (an autocast of the model's
    # device: SOLVER.AMP), where it halves the training step on a CPU with bfloat16 instructions;
    # float32 training runs NCHW either way (channels-last measured no faster there, and its
    # gradients were further from exact ones). In eval mode the convolution weights are held
    # channels-last too, same values (modeling/weight_layout.py says why and how). In training
    # they keep their layout, except under DDP with channels-last mixed-precision training, where
    # they become channels-last too (so that their gradients fit DDP's buckets: engine/trainer.py,
    # wrap_for_distributed).
    node.MEMORY_FORMAT = "auto"
    # Precision of the backbone and head at inference (eval mode): "float32"; "bfloat16" (under
    # torch.autocast; anchors, decoding and NMS stay float32; the scores and boxes move by about
    # bfloat16's 3 significant digits); or "auto": bfloat16 when MODEL.DEVICE is a CPU with
    # bfloat16 instructions (AMX-BF16 or AVX512-BF16: `python -m retinanet_plugin.env` says),
    # float32 otherwise. Training precision is SOLVER.AMP's. TorchScript, traced and exported models
    # (retinanet_plugin.export, predict.py --backend onnxruntime) run float32 either way.
    node.INFERENCE_DTYPE = "float32"
    # torch.compile of the backbone and head at inference (eval mode, eager PyTorch): "none", or one
    # of torch.compile's modes ("default", "reduce-overhead", "max-autotune",
    # "max-autotune-no-cudagraphs"). Warm-up: the first image compiles (tens of seconds on a CPU,
    # longer for "max-autotune"), and so does the first image of a second size (after which the
    # sizes are dynamic); later calls reuse the compiled code. Post-processing (thresholds, NMS),
    # training, TorchScript and the exporters run eager either way.
    node.COMPILE = "none"
    # With COMPILE: calls without autograd (torch.no_grad or inference_mode, as Detectron2's
    # evaluator and DefaultPredictor make them) compile with Inductor's freezing passes
    # (torch._inductor.config.freezing): the convolutions become oneDNN ones with their ReLU and
    # residual sum fused, which is what makes compiling pay on a CPU (benchmarks/bench_compile.py).
    # The weights stay inputs of the compiled code: detections follow a weight change
    # (tests/test_compiled_inference.py). False: torch.compile's mode alone.
    node.COMPILE_FREEZING = True


def _add_test_time_augmentation_keys(node: CN) -> None:
    """How test-time augmentation merges the detections of its views."""
    # Test-time augmentation (TEST.AUG, Detectron2's keys, says which views) merges the views'
    # detections with these (retinanet_plugin.modeling.tta_merge). The defaults are class-aware
    # NMS at MODEL.RETINANET.NMS_THRESH_TEST alone, keeping each box's best score (Detectron2's
    # merge for its R-CNN test-time augmentation).
    node.TTA = CN()
    # Box voting: each box NMS keeps becomes the score-weighted mean of the boxes of its class, from
    # every view, that overlap it by at least this IoU (its voters, itself included). 0: off (the
    # kept box as it is).
    node.TTA.VOTING_IOU = 0.0
    # A kept box's score: "best" (its own, the best of the boxes NMS suppressed for it) or
    # "best_and_consensus" (needs VOTING_IOU > 0): the mean of its own score and the views'
    # consensus, the sum of its voters' scores divided by the number of views, at most 1. A box
    # that one view alone finds then scores about half, which keeps a picture drawn at a 0.5
    # threshold from showing what one view alone believes.
    node.TTA.SCORE = "best"
    # Last, NMS over all classes at this IoU: of boxes that overlap by more, whatever their
    # classes, only the best-scored stays (one object, one label). 1.0: off. Only for data whose
    # objects of different classes never overlap this much (a rider on a horse would lose a label).
    node.TTA.CLASS_AGNOSTIC_NMS_THRESH = 1.0


def _add_dataset_keys(cfg) -> None:
    """The plugin's keys under ``DATASETS``: datasets given by files and how their images are
    read."""
    # Class names of the datasets given as voc:FOLDER (retinanet_plugin.data.file_datasets), in
    # category-id order, e.g. ("tree", "bush"). Empty: the sorted object names of all voc: datasets
    # of DATASETS.TRAIN and TEST.
    cfg.DATASETS.VOC_CLASSES = ()
    # EXIF orientation of images (retinanet_plugin.data.image_quirks): "auto" (turn the image as its
    # EXIF tag says, unless the dataset's height/width are those of the stored pixels, i.e. the
    # annotation tool showed them unturned), "apply" (always turn: Detectron2's behaviour) or
    # "ignore" (use the stored pixels).
    cfg.DATASETS.EXIF_ORIENTATION = "auto"
    # PIL's Image.MAX_IMAGE_PIXELS (process-wide): images with more pixels are read with a warning,
    # those with more than twice as many are refused as possible decompression bombs. PIL's default;
    # 0: no limit.
    cfg.DATASETS.MAX_IMAGE_PIXELS = 89478485
