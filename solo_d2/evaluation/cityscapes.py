"""Cityscapes evaluators over cityscapesscripts, working on Detectron2 v0.6 and main.

Detectron2 main's own Cityscapes evaluators import a module that no longer exists
(detectron2 issue 5436), so solo_d2 ships these. They write predictions in the
official result format into a temporary directory and call cityscapesscripts'
``evalInstanceLevelSemanticLabeling`` / ``evalPixelLevelSemanticLabeling`` on the
ground-truth files of the images that were processed (so evaluating a subset of
a split works). Nothing is written to the current directory or into the installed
cityscapesscripts package (its defaults do both).

Single machine only: all ranks write into rank 0's temporary directory; rank 0
evaluates, other ranks return ``None``.
"""

import copy
import logging
import os
import tempfile
import types
from collections import OrderedDict

import numpy as np
import torch
from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from PIL import Image

__all__ = ["CityscapesInstanceEvaluator", "CityscapesSemSegEvaluator"]

_SUFFIX = "_leftImg8bit"


class _CityscapesEvaluator(DatasetEvaluator):
    """Shared bookkeeping: temp dir agreed on by all ranks and the processed ground truth."""

    _gt_suffix = None  # set by subclasses

    def __init__(self, dataset_name):
        """
        Args:
            dataset_name (str): a registered dataset whose metadata has ``gt_dir``
                (``<root>/gtFine/<split>``) and, for instances, ``thing_classes``.
        """
        self._dataset_name = dataset_name
        self._metadata = MetadataCatalog.get(dataset_name)
        if not hasattr(self._metadata, "gt_dir"):
            raise KeyError(
                "Dataset '{}' has no metadata 'gt_dir' needed by {}".format(
                    dataset_name, type(self).__name__
                )
            )
        if comm.get_world_size() != comm.get_local_size():
            raise RuntimeError(
                "{} does not support multi-machine evaluation".format(type(self).__name__)
            )
        self._logger = logging.getLogger(__name__)
        self._working_dir = None

    def reset(self):
        if self._working_dir is not None:
            self._working_dir.cleanup()
        self._working_dir = tempfile.TemporaryDirectory(prefix="solo_d2_cityscapes_eval_")
        # every rank of this machine writes into rank 0's directory
        self._temp_dir = comm.all_gather(self._working_dir.name)[0]
        if self._temp_dir != self._working_dir.name:
            self._working_dir.cleanup()
        self._pairs = []  # (prediction file, ground-truth file)

    def _stem_and_gt(self, file_name):
        """Image stem (``<city>_<seq>_<frame>``) and its ground-truth file."""
        stem = os.path.splitext(os.path.basename(file_name))[0]
        if stem.endswith(_SUFFIX):
            stem = stem[: -len(_SUFFIX)]
        city = stem.split("_")[0]
        gt_file = os.path.join(self._metadata.gt_dir, city, stem + self._gt_suffix)
        return stem, gt_file

    def _gathered_pairs(self):
        comm.synchronize()
        pairs = (
            [p for part in comm.gather(self._pairs, dst=0) for p in part]
            if comm.is_main_process()
            else []
        )
        if comm.is_main_process():
            if not pairs:
                self._logger.warning(
                    "{}: no image was processed; nothing to evaluate".format(type(self).__name__)
                )
            missing = [gt for _, gt in pairs if not os.path.isfile(gt)]
            if missing:
                raise FileNotFoundError(
                    "Ground-truth file '{}' of dataset '{}' is missing (gt_dir='{}')".format(
                        missing[0], self._dataset_name, self._metadata.gt_dir
                    )
                )
            pairs = sorted(set(pairs), key=lambda p: p[1])
        return pairs

    def _cleanup(self):
        if self._working_dir is not None:
            self._working_dir.cleanup()
            self._working_dir = None

    def _quiet_args(self, cs_eval):
        """A private copy of a cityscapesscripts module's ``args``, reading predictions from
        this evaluator's temporary folder, writing no JSON and printing nothing."""
        args = copy.deepcopy(cs_eval.args)
        args.predictionPath = os.path.abspath(self._temp_dir)
        args.predictionWalk = None
        args.JSONOutput = False
        args.quiet = True
        args.colorized = False
        return args


class _NumpyWithIn1d(types.ModuleType):
    """numpy as cityscapesscripts expects it: its evaluation modules (2.2.4, the latest) call
    ``np.in1d``, which NumPy 2.4 removed. ``in1d(a, b)`` was ``isin(ravel(a), b)``."""

    def __getattr__(self, name):
        return getattr(np, name)

    @staticmethod
    def in1d(ar1, ar2, assume_unique=False, invert=False):
        return np.isin(np.ravel(ar1), ar2, assume_unique=assume_unique, invert=invert)


def _cityscapes_module(module):
    """``module`` (a cityscapesscripts evaluation module), given a numpy with ``in1d`` where
    the installed NumPy has none; only that module's ``np`` changes, never numpy itself."""
    if not hasattr(module.np, "in1d"):
        module.np = _NumpyWithIn1d("numpy")
    return module


class CityscapesInstanceEvaluator(_CityscapesEvaluator):
    """Cityscapes instance-level AP (cityscapesscripts' definition: AP over IoU 0.5:0.95,
    ground-truth regions under 100 pixels ignored)."""

    _gt_suffix = "_gtFine_instanceIds.png"

    def process(self, inputs, outputs):
        """
        Args:
            inputs: dicts with ``file_name``.
            outputs: dicts with ``instances``: Instances with ``pred_masks`` (N, H, W) bool,
                ``pred_classes`` (N,) contiguous thing ids, ``scores`` (N,).
        """
        from cityscapesscripts.helpers.labels import name2label

        for inp, out in zip(inputs, outputs):
            stem, gt_file = self._stem_and_gt(inp["file_name"])
            pred_txt = os.path.join(self._temp_dir, stem + "_pred.txt")
            lines = []
            if "instances" in out:
                instances = out["instances"].to(torch.device("cpu"))
                masks = instances.pred_masks.numpy().astype(np.uint8)
                classes = instances.pred_classes.tolist()
                scores = instances.scores.tolist()
                for i, (cls, score) in enumerate(zip(classes, scores)):
                    name = self._metadata.thing_classes[cls]
                    png = "{}_{}_{}.png".format(stem, i, name.replace(" ", "_"))
                    Image.fromarray(masks[i] * 255).save(os.path.join(self._temp_dir, png))
                    lines.append("{} {} {}\n".format(png, name2label[name].id, score))
            with open(pred_txt, "w") as f:  # a (possibly empty) file for every image
                f.writelines(lines)
            self._pairs.append((pred_txt, gt_file))

    def evaluate(self):
        """
        Returns:
            dict: ``{"segm": {"AP": ..., "AP50": ...}}`` in percent (rank 0; others: None).
        """
        pairs = self._gathered_pairs()
        if not comm.is_main_process():
            return None
        import cityscapesscripts.evaluation.evalInstanceLevelSemanticLabeling as cs_eval

        _cityscapes_module(cs_eval)

        args = self._quiet_args(cs_eval)
        args.gtInstancesFile = os.path.join(self._temp_dir, "gtInstances.json")
        preds, gts = [p for p, _ in pairs], [os.path.abspath(g) for _, g in pairs]
        self._logger.info(
            "Evaluating {} images with cityscapesscripts (instance level) ...".format(len(gts))
        )
        cs_eval.setInstanceLabels(args)
        gt_instances = cs_eval.getGtInstances(gts, args)
        matches = cs_eval.matchGtWithPreds(preds, gts, gt_instances, args)
        averages = cs_eval.computeAverages(cs_eval.evaluateMatches(matches, args), args)
        self._cleanup()
        ret = OrderedDict()
        ret["segm"] = {
            "AP": 100.0 * float(averages["allAp"]),
            "AP50": 100.0 * float(averages["allAp50%"]),
        }
        for name, cls_avg in averages["classes"].items():
            ret["segm"]["AP-" + name] = 100.0 * float(cls_avg["ap"])
        self._logger.info("Cityscapes instance results: {}".format(dict(ret["segm"])))
        return ret


class CityscapesSemSegEvaluator(_CityscapesEvaluator):
    """Cityscapes pixel-level IoU / iIoU over the 19 evaluated classes (cityscapesscripts)."""

    _gt_suffix = "_gtFine_labelIds.png"

    def process(self, inputs, outputs):
        """
        Args:
            inputs: dicts with ``file_name``.
            outputs: dicts with ``sem_seg``: (19, H, W) scores over Cityscapes train ids.
        """
        from cityscapesscripts.helpers.labels import trainId2label

        lut = np.zeros(256, dtype=np.uint8)  # train id -> label id
        for train_id, label in trainId2label.items():
            if 0 <= train_id < 255 and not label.ignoreInEval:
                lut[train_id] = label.id
        for inp, out in zip(inputs, outputs):
            stem, gt_file = self._stem_and_gt(inp["file_name"])
            train_ids = (
                out["sem_seg"].argmax(dim=0).to(torch.device("cpu")).numpy().astype(np.uint8)
            )
            pred_png = os.path.join(self._temp_dir, stem + "_pred.png")
            Image.fromarray(lut[train_ids]).save(pred_png)
            self._pairs.append((pred_png, gt_file))

    def evaluate(self):
        """
        Returns:
            dict: ``{"cityscapes_sem_seg": {"IoU", "iIoU", "IoU_sup", "iIoU_sup"}}`` in percent
            (rank 0). The key differs from ``SemSegEvaluator``'s ``"sem_seg"`` so both can run in
            one ``DatasetEvaluators``.
        """
        pairs = self._gathered_pairs()
        if not comm.is_main_process():
            return None
        import cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling as cs_eval

        _cityscapes_module(cs_eval)

        args = self._quiet_args(cs_eval)
        args.bold = args.nocol = ""
        self._logger.info(
            "Evaluating {} images with cityscapesscripts (pixel level) ...".format(len(pairs))
        )
        results = cs_eval.evaluateImgLists([p for p, _ in pairs], [g for _, g in pairs], args)
        self._cleanup()
        ret = OrderedDict()
        ret["cityscapes_sem_seg"] = {
            "IoU": 100.0 * results["averageScoreClasses"],
            "iIoU": 100.0 * results["averageScoreInstClasses"],
            "IoU_sup": 100.0 * results["averageScoreCategories"],
            "iIoU_sup": 100.0 * results["averageScoreInstCategories"],
        }
        self._logger.info("Cityscapes semantic results: {}".format(ret["cityscapes_sem_seg"]))
        return ret
