#!/usr/bin/env python
"""Train and evaluate solo_d2 models (SOLO family, BiSeNet) with detectron2's conventions.

    tools/train_net.py --config-file configs/SOLOv2/R50_1x.yaml --num-gpus 8
    tools/train_net.py --config-file configs/SOLOv2/R50_1x.yaml --eval-only MODEL.WEIGHTS model.pth
    # CPU, no GPU: one process, or N gloo workers
    tools/train_net.py --config-file configs/Synthetic/SOLOv2_R18.yaml --num-gpus 0
    tools/train_net.py --config-file configs/Synthetic/SOLOv2_R18.yaml --num-gpus 0 \\
        --num-cpu-workers 2

Your own data (docs/CUSTOM_DATA.md): register it on the command line, before the options
that name it; every worker registers it too (repeat the flag for each dataset):

    tools/train_net.py --config-file my_config.yaml --register-coco mydata_train train.json train/ \
        --register-coco mydata_val val.json val/ DATASETS.TRAIN '("mydata_train",)' ...
    # CLASSES: 'a,b,c' or a file, one name a line
    --register-sem-seg NAME IMAGE_DIR LABEL_DIR CLASSES
    --register-coco-panoptic NAME IMAGE_DIR PANOPTIC_DIR PANOPTIC_JSON

--eval-only loads MODEL.WEIGHTS refusing weights of another class count (instead of leaving the
mismatched layers random) and checks the class count of every DATASETS.TEST against the config.
--check-images all decodes every image before training and names each unreadable one.

One run per OUTPUT_DIR: the launching process holds OUTPUT_DIR/solo_d2.lock (pid, host)
for the whole run; a second run on a directory a live run holds is refused (a stale
lock, whose process is gone, is taken over). --eval-only without MODEL.WEIGHTS (a
randomly initialized model) is refused unless --allow-random-weights is given.
"""

import logging
import os
import sys

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import default_argument_parser, default_setup
from detectron2.evaluation import verify_results
from detectron2.utils import comm

# allow running from a source checkout without installing
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import solo_d2  # noqa: E402,F401  (registers models and datasets)
from solo_d2.data import check_dataset  # noqa: E402
from solo_d2.data.datasets import CHECK_IMAGES_MODES, IMAGE_SAMPLE_SIZE  # noqa: E402
from solo_d2.data.register import add_register_arguments, register_from_args  # noqa: E402
from solo_d2.engine import OutputDirLock, OutputDirLockedError, Trainer, launch, setup_cfg  # noqa: E402
from solo_d2.engine.model_metadata import check_eval_datasets, load_weights_for_inference  # noqa: E402

RANDOM_WEIGHTS_MESSAGE = (
    "--eval-only with an empty MODEL.WEIGHTS would evaluate a randomly initialized model. "
    "Pass MODEL.WEIGHTS path/to/model_final.pth (or --resume to use OUTPUT_DIR's last checkpoint), "
    "or --allow-random-weights to do it anyway."
)


def setup(args):
    cfg = setup_cfg(args.config_file, args.opts)
    default_setup(cfg, args)
    return cfg


def main(args):
    """One worker's run. :func:`run` has checked the datasets and --eval-only's weights
    before starting the workers. The --register-* datasets are registered again here: a
    spawned worker starts with Detectron2's catalogs as its imports leave them."""
    register_from_args(args)
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        checkpointer = DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR)
        path = (
            checkpointer.get_checkpoint_file()
            if args.resume and checkpointer.has_checkpoint()
            else cfg.MODEL.WEIGHTS
        )
        saved = load_weights_for_inference(
            cfg, model, path
        )  # weights of another class count: an error
        check_eval_datasets(cfg, saved)
        res = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, res)
        return res
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def check_eval_weights(cfg, args):
    """Refuse --eval-only of a random model (no MODEL.WEIGHTS, no checkpoint to resume)."""
    if cfg.MODEL.WEIGHTS or getattr(args, "allow_random_weights", False):
        return
    if args.resume and os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint")):
        return
    raise SystemExit("error: " + RANDOM_WEIGHTS_MESSAGE)


def run(args):
    """Launch ``main`` holding the OUTPUT_DIR lock (taken here, in the launching process of
    machine rank 0, never in worker processes). Before any worker starts, this launching
    process (one per machine) refuses --eval-only of a random model and checks the datasets'
    files once, instead of every worker loading the dataset dicts to check them. The
    --register-* datasets are registered first, before the config is built."""
    register_from_args(args)
    cfg = setup_cfg(args.config_file, args.opts)
    if args.eval_only:
        check_eval_weights(cfg, args)
    lock = None
    if args.machine_rank == 0 and not args.eval_only:
        lock = OutputDirLock(cfg.OUTPUT_DIR)
        try:
            lock.acquire()
        except OutputDirLockedError as e:
            sys.stderr.write(f"error: {e}\n")
            return 2
    try:
        for name in list(cfg.DATASETS.TEST) + ([] if args.eval_only else list(cfg.DATASETS.TRAIN)):
            check_dataset(name, check_images=args.check_images)
        launch(
            main,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
            num_cpu_workers=args.num_cpu_workers,
        )
    finally:
        if lock is not None:
            lock.release()
    return 0


def get_parser():
    parser = default_argument_parser()
    parser.add_argument(
        "--num-cpu-workers",
        type=int,
        default=0,
        help="with --num-gpus 0: number of CPU worker processes per machine (gloo backend)",
    )
    parser.add_argument(
        "--check-images",
        choices=CHECK_IMAGES_MODES,
        default="sample",
        help="before starting, check the image files of the datasets: that a fixed sample of "
        f"{IMAGE_SAMPLE_SIZE} per dataset exists (default); 'all': decode every image and label "
        "file (with a progress bar) and name each missing or unreadable one; 'none'",
    )
    parser.add_argument(
        "--allow-random-weights",
        action="store_true",
        help="allow --eval-only with an empty MODEL.WEIGHTS (evaluates a "
        "randomly initialized model)",
    )
    add_register_arguments(parser)
    return parser


if __name__ == "__main__":
    args = get_parser().parse_args()
    logging.getLogger(__name__).info("Command Line Args: %s", args)
    sys.exit(run(args))
