#!/usr/bin/env python
"""Train and evaluate solo_d2 models (SOLO family, BiSeNet) with detectron2's conventions.

    tools/train_net.py --config-file configs/SOLOv2/R50_1x.yaml --num-gpus 8
    tools/train_net.py --config-file configs/SOLOv2/R50_1x.yaml --eval-only MODEL.WEIGHTS model.pth
    # CPU, no GPU: one process, or N gloo workers
    tools/train_net.py --config-file configs/Synthetic/SOLOv2_R18.yaml --num-gpus 0
    tools/train_net.py --config-file configs/Synthetic/SOLOv2_R18.yaml --num-gpus 0 --num-cpu-workers 2
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
from solo_d2.engine import Trainer, launch, setup_cfg  # noqa: E402


def setup(args):
    cfg = setup_cfg(args.config_file, args.opts)
    default_setup(cfg, args)
    return cfg


def main(args):
    cfg = setup(args)
    for name in list(cfg.DATASETS.TEST) + ([] if args.eval_only else list(cfg.DATASETS.TRAIN)):
        check_dataset(name)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        res = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, res)
        return res
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def get_parser():
    parser = default_argument_parser()
    parser.add_argument(
        "--num-cpu-workers",
        type=int,
        default=0,
        help="with --num-gpus 0: number of CPU worker processes per machine (gloo backend)",
    )
    return parser


if __name__ == "__main__":
    args = get_parser().parse_args()
    logging.getLogger(__name__).info("Command Line Args: %s", args)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
        num_cpu_workers=args.num_cpu_workers,
    )
