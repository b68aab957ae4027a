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
(v0.6's ``np.int`` needs NumPy < 1.24). Construction (arguments, metadata) and the
``sem_seg_predictions.json`` encoding are Detectron2's.
"""

import itertools
import json
import logging
import os
from collections import OrderedDict

import numpy as np
import pycocotools.mask as mask_util
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils.comm import all_gather, is_main_process, synchronize
from detectron2.utils.file_io import PathManager
from PIL import Image

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


class SemSegEvaluator(DatasetEvaluator):
    """Detectron2's ``SemSegEvaluator`` (same arguments, metadata and outputs) reporting
    Detectron2 v0.6's metrics on every Detectron2 version (see the module notes). Its own
    implementation, not a subclass: Detectron2's keeps its state in private attributes that
    differ between versions.

    Args:
        dataset_name: a registered dataset whose dicts have ``file_name`` and
            ``sem_seg_file_name`` and whose metadata has ``stuff_classes`` and ``ignore_label``.
        distributed: gather the results of all workers before computing the metrics.
        output_dir: where ``sem_seg_predictions.json`` and ``sem_seg_evaluation.pth`` go.
        num_classes, ignore_label: Detectron2's deprecated overrides of the metadata.
    """

    def __init__(
        self,
        dataset_name,
        distributed=True,
        output_dir=None,
        *,
        num_classes=None,
        ignore_label=None,
    ):
        self._logger = logging.getLogger(__name__)
        self.dataset_name = dataset_name
        self.distributed = distributed
        self.output_dir = output_dir
        self.cpu_device = torch.device("cpu")
        self.input_file_to_gt_file = {
            d["file_name"]: d["sem_seg_file_name"] for d in DatasetCatalog.get(dataset_name)
        }
        meta = MetadataCatalog.get(dataset_name)
        self.class_names = list(meta.stuff_classes)
        self.num_classes = len(self.class_names)
        if num_classes is not None and num_classes != self.num_classes:  # deprecated in Detectron2
            raise ValueError(
                f"SemSegEvaluator: num_classes {num_classes} != {self.num_classes} stuff_classes "
                f"of dataset '{dataset_name}'"
            )
        self.ignore_label = meta.ignore_label if ignore_label is None else ignore_label
        # contiguous id -> dataset id for the json, as Detectron2's evaluator writes it
        id_map = meta.get("stuff_dataset_id_to_contiguous_id")
        self.contiguous_id_to_dataset_id = {v: k for k, v in id_map.items()} if id_map else None

    def reset(self):
        self.conf_matrix = np.zeros((self.num_classes + 1, self.num_classes + 1), dtype=np.int64)
        self.predictions = []

    def process(self, inputs, outputs):
        """
        Args:
            inputs: dicts with ``file_name``
                (whose ground truth is the dataset's ``sem_seg_file_name``).
            outputs: dicts with ``sem_seg``, the class scores ``[K, H, W]`` of the image.
        """
        for input, output in zip(inputs, outputs):
            pred = np.array(output["sem_seg"].argmax(dim=0).to(self.cpu_device), dtype=int)
            with PathManager.open(self.input_file_to_gt_file[input["file_name"]], "rb") as f:
                gt = np.array(Image.open(f), dtype=int)
            gt[gt == self.ignore_label] = self.num_classes
            self.conf_matrix += np.bincount(
                (self.num_classes + 1) * pred.reshape(-1) + gt.reshape(-1),
                minlength=self.conf_matrix.size,
            ).reshape(self.conf_matrix.shape)
            self.predictions.extend(self.encode_json_sem_seg(pred, input["file_name"]))

    def encode_json_sem_seg(self, sem_seg, input_file_name):
        """COCO-stuff json records (one RLE per predicted class) of an ``[H, W]`` label map,
        as Detectron2's ``SemSegEvaluator.encode_json_sem_seg``."""
        records = []
        for label in np.unique(sem_seg):
            if self.contiguous_id_to_dataset_id is not None:
                if label not in self.contiguous_id_to_dataset_id:
                    raise ValueError(
                        "Dataset '{}': predicted label {} is not in the metadata's "
                        "stuff_dataset_id_to_contiguous_id".format(self.dataset_name, label)
                    )
                dataset_id = self.contiguous_id_to_dataset_id[label]
            else:
                dataset_id = int(label)
            mask = (sem_seg == label).astype(np.uint8)
            rle = mask_util.encode(np.array(mask[:, :, None], order="F"))[0]
            rle["counts"] = rle["counts"].decode("utf-8")
            records.append(
                {"file_name": input_file_name, "category_id": dataset_id, "segmentation": rle}
            )
        return records

    def evaluate(self):
        """mIoU, fwIoU, mACC, pACC and the per-class IoU / accuracy, as Detectron2 v0.6 computes
        them (``{"sem_seg": {...}}``; ``None`` on ranks other than 0 when distributed)."""
        conf_matrix, predictions = self.conf_matrix, self.predictions
        if self.distributed:
            synchronize()
            conf_matrices = all_gather(self.conf_matrix)
            predictions = list(itertools.chain(*all_gather(self.predictions)))
            if not is_main_process():
                return None
            conf_matrix = sum(conf_matrices[1:], conf_matrices[0].copy())

        if self.output_dir:
            PathManager.mkdirs(self.output_dir)
            file_path = os.path.join(self.output_dir, "sem_seg_predictions.json")
            with PathManager.open(file_path, "w") as f:
                f.write(json.dumps(predictions))

        res = sem_seg_metrics(conf_matrix, self.class_names)

        if self.output_dir:
            file_path = os.path.join(self.output_dir, "sem_seg_evaluation.pth")
            with PathManager.open(file_path, "wb") as f:
                torch.save(res, f)
        results = OrderedDict({"sem_seg": res})
        self._logger.info(results)
        return results
