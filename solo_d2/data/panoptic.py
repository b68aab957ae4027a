"""Panoptic training data for ``SOLOPanoptic``: instance targets (things) and a semantic target
(stuff + one "things" class, as Panoptic FPN) from either of Detectron2's panoptic formats.

- *separated* (``coco_2017_*_panoptic_separated``): ``annotations`` (COCO instances, thing ids
  ``0..K-1``) and ``sem_seg_file_name`` (0 = things, 1..S = stuff, 255 = void), read as they are.
- *standard* (``coco_2017_*_panoptic``, ``cityscapes_fine_panoptic_*``): ``pan_seg_file_name``
  (COCO panoptic PNG, id = R + 256 G + 256^2 B) and ``segments_info`` with ``isthing`` and one
  contiguous id space for things and stuff. Thing segments become instances (crowd ones are left
  out of the instances), every thing pixel gets semantic label 0, stuff class ``j`` label
  ``1 + j``, void 255.

:func:`panoptic_class_maps` gives the two id maps, from the dataset's metadata, that the mapper
uses one way and the model (its output ``segments_info``) the other way.
"""

import copy
from typing import Dict, List, Tuple

import numpy as np
import pycocotools.mask as mask_util
import torch
from detectron2.data import MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import BoxMode

from .mapper import FileNamingDatasetMapper, ImageReadError

__all__ = ["panoptic_class_maps", "PanopticDatasetMapper", "rgb2id"]


def rgb2id(color: np.ndarray) -> np.ndarray:
    """COCO panoptic id of each pixel of an ``[H, W, 3]`` uint8 RGB image:
    ``R + 256 G + 256^2 B``."""
    color = np.asarray(color).astype(np.int64)
    return color[..., 0] + 256 * color[..., 1] + 256 * 256 * color[..., 2]


def panoptic_class_maps(metadata) -> Tuple[List[int], List[int]]:
    """``(thing_ids, stuff_ids)``: the dataset's contiguous category id of SOLO class ``k``
    (``thing_ids[k]``) and of semantic label ``s`` (``stuff_ids[s]``; ``stuff_ids[0]`` is -1, the
    "things" class). ``metadata``: a Detectron2 ``Metadata`` of a panoptic dataset, separated
    (``stuff_classes[0] == "things"``) or standard (one contiguous space)."""
    things = getattr(metadata, "thing_dataset_id_to_contiguous_id", None)
    stuff = getattr(metadata, "stuff_dataset_id_to_contiguous_id", None)
    name = getattr(metadata, "name", "?")
    if not things or not stuff:
        raise ValueError(
            f"dataset {name!r} has no panoptic metadata (thing_dataset_id_to_contiguous_id and "
            "stuff_dataset_id_to_contiguous_id): a panoptic model needs a panoptic dataset"
        )
    thing_ids = sorted(things.values())
    stuff_classes = list(getattr(metadata, "stuff_classes", []))
    if stuff_classes[:1] == ["things"]:  # separated: stuff contiguous ids 1..S, 0 = things
        return thing_ids, [-1] + sorted(v for v in stuff.values() if v != 0)
    stuff_only = sorted(v for k, v in stuff.items() if k not in things)
    return thing_ids, [-1] + stuff_only


class PanopticDatasetMapper(FileNamingDatasetMapper):
    """Detectron2's ``DatasetMapper`` for panoptic dataset dicts (either format): ``image``,
    ``instances`` (``gt_classes`` = SOLO class, ``gt_boxes``, ``gt_masks``) and ``sem_seg``
    (``[H, W]`` long, 0 = things, 1..S stuff, 255 void), all under the same augmentation.
    At test time only the image (the evaluators read the ground truth from the files)."""

    def __init__(self, cfg, is_train: bool = True, augmentations=None):
        super().__init__(cfg, is_train, augmentations=augmentations)
        names = cfg.DATASETS.TRAIN if is_train else cfg.DATASETS.TEST
        meta = MetadataCatalog.get(names[0]) if names else None
        self.thing_ids, self.stuff_ids = panoptic_class_maps(meta) if meta is not None else ([], [])
        self._thing_index = {c: k for k, c in enumerate(self.thing_ids)}
        self._stuff_label = {c: s for s, c in enumerate(self.stuff_ids) if s > 0}
        self.dataset_name = names[0] if names else "?"

    def _from_panoptic(self, pan: np.ndarray, segments_info: List[Dict]):
        """Semantic target and instance annotations of a standard-format panoptic label map."""
        sem = np.full(pan.shape, 255, dtype=np.uint8)
        annos = []
        for seg in segments_info:
            mask = pan == seg["id"]
            cid = seg["category_id"]
            if seg.get("isthing", cid in self._thing_index):
                if cid not in self._thing_index:
                    raise ValueError(
                        f"{self.dataset_name}: segment {seg['id']} has thing category "
                        f"{cid}, not in the metadata"
                    )
                sem[mask] = 0
                if seg.get("iscrowd", 0) or not mask.any():
                    continue
                ys, xs = np.nonzero(mask)
                annos.append(
                    {
                        "bbox": [
                            float(xs.min()),
                            float(ys.min()),
                            float(xs.max() + 1),
                            float(ys.max() + 1),
                        ],
                        "bbox_mode": BoxMode.XYXY_ABS,
                        "category_id": self._thing_index[cid],
                        "segmentation": mask_util.encode(np.asfortranarray(mask.astype(np.uint8))),
                        "iscrowd": 0,
                    }
                )
            else:
                if cid not in self._stuff_label:
                    raise ValueError(
                        f"{self.dataset_name}: segment {seg['id']} has stuff category "
                        f"{cid}, not in the metadata"
                    )
                sem[mask] = self._stuff_label[cid]
        return sem, annos

    def __call__(self, dataset_dict):
        if not self.is_train:
            return super().__call__(dataset_dict)
        d = copy.deepcopy(dataset_dict)
        if "pan_seg_file_name" not in d and "sem_seg_file_name" not in d:
            raise ValueError(
                f"{self.dataset_name}: dataset item {d.get('file_name')} has neither "
                "'pan_seg_file_name' nor 'sem_seg_file_name': a panoptic model needs a panoptic "
                "dataset (standard or _separated)"
            )
        try:
            image = utils.read_image(d["file_name"], format=self.image_format)
            utils.check_image_size(d, image)
            mask_format = self.instance_mask_format
            if "pan_seg_file_name" in d:
                pan = rgb2id(utils.read_image(d.pop("pan_seg_file_name"), "RGB"))
                sem, annos = self._from_panoptic(pan, d.pop("segments_info"))
                mask_format = "bitmask"  # the thing masks come as RLE
            else:
                sem = utils.read_image(d.pop("sem_seg_file_name")).astype("uint8")
                annos = d.pop("annotations", [])
        except (OSError, SyntaxError) as e:  # PIL: truncated / unidentified / missing file
            files = ", ".join(
                f"{k}={dataset_dict[k]}"
                for k in ("file_name", "pan_seg_file_name", "sem_seg_file_name")
                if k in dataset_dict
            )
            raise ImageReadError(
                f"Cannot read dataset item {files}: {type(e).__name__}: {e}"
            ) from e
        aug = T.AugInput(image, sem_seg=sem)
        transforms = self.augmentations(aug)
        image, sem = aug.image, aug.sem_seg
        shape = image.shape[:2]
        d["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        d["sem_seg"] = torch.as_tensor(sem.astype("long"))
        annos = [
            utils.transform_instance_annotations(obj, transforms, shape)
            for obj in annos
            if obj.get("iscrowd", 0) == 0
        ]
        instances = utils.annotations_to_instances(annos, shape, mask_format=mask_format)
        d["instances"] = utils.filter_empty_instances(instances)
        return d
