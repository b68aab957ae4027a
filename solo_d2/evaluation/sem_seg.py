"""Detectron2's ``SemSegEvaluator`` with the same metrics on Detectron2 v0.6 and main.

Detectron2 main changed what its ``SemSegEvaluator`` reports:

- ``mIoU``: v0.6 averages the IoU over the classes that appear in the ground truth *or* in
  the predictions (a class predicted but absent from the ground truth counts as IoU 0, as in
  the usual confusion-matrix mIoU); main averages over the classes of the ground truth only.
  The two differ whenever a model predicts a class the evaluated images do not contain.
- main adds boundary IoU (``BoundaryIoU-*``, ``min(IoU, B-Iou)-*``, an OpenCV erosion of every
  prediction and ground truth).

solo_d2's :class:`SemSegEvaluator` computes v0.6's metrics (``mIoU``, ``fwIoU``, ``IoU-*``,
``mACC``, ``pACC``, ``ACC-*``) on both, without the boundary IoU, so that a result does not
depend on the Detectron2 version. It also reads the label images with ``dtype=int``
(v0.6's ``np.int`` needs NumPy < 1.24). Construction, ``reset`` and the
``sem_seg_predictions.json`` encoding are Detectron2's.
"""
import itertools
import json
import os
from collections import OrderedDict

import numpy as np
import torch
from PIL import Image

from detectron2.evaluation import SemSegEvaluator as _Detectron2SemSegEvaluator
from detectron2.utils.comm import all_gather, is_main_process, synchronize
from detectron2.utils.file_io import PathManager

__all__ = ["SemSegEvaluator", "sem_seg_metrics"]


def sem_seg_metrics(conf_matrix, class_names):
    """Detectron2 v0.6's semantic-segmentation metrics (percent) of a confusion matrix
    ``[K + 1, K + 1]`` (rows: prediction, columns: ground truth; the last row and column
    count the ignored pixels)."""
    num_classes = len(class_names)
    acc = np.full(num_classes, np.nan, dtype=np.float64)
    iou = np.full(num_classes, np.nan, dtype=np.float64)
    tp = conf_matrix.diagonal()[:-1].astype(np.float64)
    pos_gt = np.sum(conf_matrix[:-1, :-1], axis=0).astype(np.float64)
    class_weights = pos_gt / np.sum(pos_gt)
    pos_pred = np.sum(conf_matrix[:-1, :-1], axis=1).astype(np.float64)
    acc_valid = pos_gt > 0
    acc[acc_valid] = tp[acc_valid] / pos_gt[acc_valid]
    iou_valid = (pos_gt + pos_pred) > 0
    union = pos_gt + pos_pred - tp
    iou[acc_valid] = tp[acc_valid] / union[acc_valid]
    macc = np.sum(acc[acc_valid]) / np.sum(acc_valid)
    miou = np.sum(iou[acc_valid]) / np.sum(iou_valid)
    fiou = np.sum(iou[acc_valid] * class_weights[acc_valid])
    pacc = np.sum(tp) / np.sum(pos_gt)

    res = {"mIoU": 100 * miou, "fwIoU": 100 * fiou}
    for i, name in enumerate(class_names):
        res["IoU-{}".format(name)] = 100 * iou[i]
    res["mACC"] = 100 * macc
    res["pACC"] = 100 * pacc
    for i, name in enumerate(class_names):
        res["ACC-{}".format(name)] = 100 * acc[i]
    return res


class SemSegEvaluator(_Detectron2SemSegEvaluator):
    """``detectron2.evaluation.SemSegEvaluator`` (same arguments) reporting Detectron2 v0.6's
    metrics on every Detectron2 version (see the module notes)."""

    def __init__(self, dataset_name, distributed=True, output_dir=None, **kwargs):
        super().__init__(dataset_name, distributed=distributed, output_dir=output_dir, **kwargs)
        self._compute_boundary_iou = False  # Detectron2 main's extra metric, not computed

    def process(self, inputs, outputs):
        """
        Args:
            inputs: dicts with ``file_name`` (whose ground truth is the dataset's ``sem_seg_file_name``).
            outputs: dicts with ``sem_seg``, the class scores ``[K, H, W]`` of the image.
        """
        for input, output in zip(inputs, outputs):
            output = output["sem_seg"].argmax(dim=0).to(self._cpu_device)
            pred = np.array(output, dtype=int)
            with PathManager.open(self.input_file_to_gt_file[input["file_name"]], "rb") as f:
                gt = np.array(Image.open(f), dtype=int)

            gt[gt == self._ignore_label] = self._num_classes

            self._conf_matrix += np.bincount(
                (self._num_classes + 1) * pred.reshape(-1) + gt.reshape(-1),
                minlength=self._conf_matrix.size,
            ).reshape(self._conf_matrix.shape)

            self._predictions.extend(self.encode_json_sem_seg(pred, input["file_name"]))

    def evaluate(self):
        """mIoU, fwIoU, mACC, pACC and the per-class IoU / accuracy, as Detectron2 v0.6 computes
        them (``{"sem_seg": {...}}``; ``None`` on ranks other than 0 when distributed)."""
        if self._distributed:
            synchronize()
            conf_matrix_list = all_gather(self._conf_matrix)
            self._predictions = all_gather(self._predictions)
            self._predictions = list(itertools.chain(*self._predictions))
            if not is_main_process():
                return None

            self._conf_matrix = np.zeros_like(self._conf_matrix)
            for conf_matrix in conf_matrix_list:
                self._conf_matrix += conf_matrix

        if self._output_dir:
            PathManager.mkdirs(self._output_dir)
            file_path = os.path.join(self._output_dir, "sem_seg_predictions.json")
            with PathManager.open(file_path, "w") as f:
                f.write(json.dumps(self._predictions))

        res = sem_seg_metrics(self._conf_matrix, self._class_names)

        if self._output_dir:
            file_path = os.path.join(self._output_dir, "sem_seg_evaluation.pth")
            with PathManager.open(file_path, "wb") as f:
                torch.save(res, f)
        results = OrderedDict({"sem_seg": res})
        self._logger.info(results)
        return results
