"""Panoptic evaluators: COCO panoptic quality (panopticapi) and Cityscapes' (cityscapesscripts).

Both take predictions in Detectron2's format, exactly what Panoptic FPN gives
``COCOPanopticEvaluator``: ``output["panoptic_seg"] = (panoptic_img, segments_info)`` with
``panoptic_img`` an ``[H, W]`` integer tensor of segment ids (0 = void) and ``segments_info`` a
list of ``{"id", "category_id", "isthing"}`` (other keys are ignored), ``category_id`` being a
*contiguous* id in the dataset's metadata convention: ``thing_dataset_id_to_contiguous_id``
values for things, ``stuff_dataset_id_to_contiguous_id`` values for stuff (standard datasets:
one space for both; separated datasets: stuff ``1..S``, the "things" stuff class 0 is no
segment). As in Detectron2, a segment without ``isthing`` has the dataset's own (json) category
id, and ``segments_info=None`` means ids ``category * label_divisor + instance`` with -1 void.
Predictions are checked first: an unknown category, a segment id of the image missing from
``segments_info`` or a malformed entry raises ``ValueError`` naming the dataset, the image and the
key; segments without a pixel are dropped (panopticapi refuses them).

- :class:`COCOPanopticEvaluator`: Detectron2's (``panopticapi.evaluation.pq_compute``, from the
  ``panopticapi-lite`` package) with the checks above. Result ``{"panoptic_seg": {"PQ", "SQ",
  "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st", "SQ_st", "RQ_st"}}`` in percent.
- :class:`CityscapesPanopticEvaluator`: cityscapesscripts' ``evalPanopticSemanticLabeling`` on
  the Cityscapes panoptic ground truth (``gtFine/cityscapes_panoptic_{split}.json`` + PNGs) of
  the images processed. Result ``{"cityscapes_panoptic_seg": {same 9 keys, "PQ-<class>",
  "SQ-<class>", "RQ-<class>"}}`` in percent (its own key, so both run in one
  ``DatasetEvaluators``).
"""

import contextlib
import io
import json
import logging
import os
from collections import OrderedDict

import numpy as np
import torch
from detectron2.data import MetadataCatalog
from detectron2.evaluation import COCOPanopticEvaluator as _D2COCOPanopticEvaluator
from detectron2.utils import comm
from PIL import Image

from ..data.datasets import ensure_dataset
from ..data.synthetic_panoptic import id2rgb
from .cityscapes import _cityscapes_module, _CityscapesEvaluator

__all__ = [
    "COCOPanopticEvaluator",
    "CityscapesPanopticEvaluator",
    "panoptic_prediction",
    "pq_results",
]

logger = logging.getLogger(__name__)
_REQUIRED = (
    "panoptic_root",
    "panoptic_json",
    "thing_dataset_id_to_contiguous_id",
    "stuff_dataset_id_to_contiguous_id",
)


def _check_panoptic_metadata(dataset_name, evaluator):
    """The dataset's metadata, after checking it has panoptic ground truth (clear errors)."""

    meta = MetadataCatalog.get(dataset_name)
    missing = [k for k in _REQUIRED if not hasattr(meta, k)]
    if missing:
        raise ValueError(
            "Dataset '{}' has no panoptic annotations: metadata {} missing (evaluator_type {!r}); "
            "{} needs a panoptic dataset, e.g. synthetic_coco_panoptic_val, "
            "coco_2017_val_panoptic(_separated), cityscapes_fine_panoptic_val".format(
                dataset_name,
                ", ".join(repr(k) for k in missing),
                getattr(meta, "evaluator_type", None),
                evaluator,
            )
        )
    ensure_dataset(dataset_name)
    for key in ("panoptic_json", "panoptic_root"):
        if not os.path.exists(getattr(meta, key)):
            raise FileNotFoundError(
                "Dataset '{}': metadata {} '{}' does not exist (see datasets/README.md)".format(
                    dataset_name, key, getattr(meta, key)
                )
            )
    return meta


def panoptic_prediction(panoptic_seg, meta, dataset_name="?", image="?"):
    """Checked panoptic prediction of one image in the dataset's category ids.

    Args:
        panoptic_seg: ``(panoptic_img, segments_info)`` as Detectron2's models return it
            (module docstring). meta: the dataset's ``Metadata``.
        dataset_name, image: named in the errors.
    Returns:
        ``(ids, segments)``: ``ids`` ``[H, W]`` int64 numpy (0 = void) and ``segments`` a list of
        ``{"id", "category_id", "isthing", "contiguous_id"}`` (``category_id``: the dataset's json
        category id), one per segment with pixels.
    Raises:
        ValueError: naming the dataset, the image and the offending key.
    """
    where = "Dataset '{}', image '{}': ".format(dataset_name, image)
    if not (isinstance(panoptic_seg, (tuple, list)) and len(panoptic_seg) == 2):
        raise ValueError(where + "output['panoptic_seg'] must be (panoptic_img, segments_info)")
    img, segments_info = panoptic_seg
    ids = img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
    if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(
            where
            + "panoptic_seg[0] must be an [H, W] integer tensor, got shape {} dtype {}".format(
                ids.shape, ids.dtype
            )
        )
    ids = ids.astype(np.int64)
    things = {v: k for k, v in meta.thing_dataset_id_to_contiguous_id.items()}
    stuff = {
        v: k for k, v in meta.stuff_dataset_id_to_contiguous_id.items() if k != 0
    }  # 0: separated "things"
    if (
        segments_info is None
    ):  # category * label_divisor + instance, -1 void (Detectron2's convention)
        divisor = getattr(meta, "label_divisor", None)
        if divisor is None:
            raise ValueError(
                where + "segments_info is None but the metadata has no 'label_divisor'"
            )
        labels = [int(v) for v in np.unique(ids) if v != -1]
        segments_info = [
            {"id": v + 1, "category_id": v // divisor, "isthing": v // divisor in things}
            for v in labels
        ]
        ids = ids + 1
    if ids.min(initial=0) < 0 or ids.max(initial=0) >= 256**3:
        raise ValueError(where + "segment ids must be in 0..256^3-1 (0 = void)")
    present = set(np.unique(ids).tolist()) - {0}
    segments, seen = [], set()
    for k, seg in enumerate(segments_info):
        key = "segments_info[{}]".format(k)
        if not isinstance(seg, dict) or any(n not in seg for n in ("id", "category_id")):
            raise ValueError(
                where
                + "{} must be a dict with 'id', 'category_id' and 'isthing', got {!r}".format(
                    key, seg
                )
            )
        sid, cid = int(seg["id"]), int(seg["category_id"])
        if sid == 0 or sid in seen:
            raise ValueError(
                where
                + "{}['id'] = {} is {}".format(key, sid, "0 (void)" if sid == 0 else "repeated")
            )
        seen.add(sid)
        if (
            seg.get("isthing") is None
        ):  # Detectron2: no 'isthing' = category_id is the dataset's own id
            dataset_ids = {**{v: k for k, v in things.items()}, **{v: k for k, v in stuff.items()}}
            if cid not in dataset_ids:
                raise ValueError(
                    where
                    + "{}['category_id'] = {} (no 'isthing': a "
                    "dataset category id) is not a category of the "
                    "dataset: its ids are {}".format(key, cid, sorted(dataset_ids))
                )
            isthing = cid in meta.thing_dataset_id_to_contiguous_id
            cid, table = dataset_ids[cid], (things if isthing else stuff)
        else:
            isthing = bool(seg["isthing"])
            table, kind = (things, "thing") if isthing else (stuff, "stuff")
            if cid not in table:
                raise ValueError(
                    where
                    + "{}['category_id'] = {} (isthing={}) is not a contiguous {} id of the "
                    "dataset: metadata '{}_dataset_id_to_contiguous_id' has values {}".format(
                        key, cid, isthing, kind, kind, sorted(table)
                    )
                )
        if sid in present:
            segments.append(
                {
                    "id": sid,
                    "category_id": int(table[cid]),
                    "isthing": isthing,
                    "contiguous_id": cid,
                }
            )
    unlisted = sorted(present - seen)
    if unlisted:
        raise ValueError(
            where
            + "segment ids {} of panoptic_seg[0] are not in segments_info".format(unlisted[:10])
        )
    return ids, segments


def pq_results(pq_res, categories=None):
    """Detectron2's result dict (percent) from panopticapi / cityscapesscripts results; with
    ``categories`` (id -> dict with ``name``) also ``PQ-<name>``, ``SQ-<name>``, ``RQ-<name>`` of
    each class in ``categories``."""
    res = OrderedDict()
    for group, suffix in (("All", ""), ("Things", "_th"), ("Stuff", "_st")):
        for metric in ("pq", "sq", "rq"):
            res[metric.upper() + suffix] = 100.0 * float(pq_res[group][metric])
    for cid, cls in sorted((pq_res.get("per_class") or {}).items()) if categories else ():
        if cid not in categories:
            continue
        for metric in ("pq", "sq", "rq"):
            res["{}-{}".format(metric.upper(), categories[cid]["name"])] = 100.0 * float(
                cls[metric]
            )
    return res


class COCOPanopticEvaluator(_D2COCOPanopticEvaluator):
    """Detectron2's ``COCOPanopticEvaluator`` (PQ by panopticapi over the dataset's
    ``panoptic_json`` / ``panoptic_root``; every image of the json must be processed), with
    checked predictions and a clear error for a dataset without panoptic annotations."""

    def __init__(self, dataset_name, output_dir=None):
        _check_panoptic_metadata(dataset_name, type(self).__name__)
        try:
            import panopticapi.evaluation  # noqa: F401
        except ImportError as e:
            raise ImportError(
                "COCOPanopticEvaluator needs panopticapi: "
                "`pip install --no-deps panopticapi-lite` (tools/bootstrap.sh does; --no-deps "
                "because its metadata pins Pillow>=10.4, numpy<2)"
            ) from e
        super().__init__(dataset_name, output_dir=output_dir)
        self._dataset_name = dataset_name

    def process(self, inputs, outputs):
        """inputs: dicts with ``file_name``, ``image_id``; outputs: dicts with ``panoptic_seg``."""
        checked = []
        for inp, out in zip(inputs, outputs):
            if "panoptic_seg" not in out:
                raise ValueError(
                    "Dataset '{}': the model output has no 'panoptic_seg' (keys {})".format(
                        self._dataset_name, sorted(out)
                    )
                )
            ids, segments = panoptic_prediction(
                out["panoptic_seg"], self._metadata, self._dataset_name, inp["file_name"]
            )
            # contiguous ids: Detectron2's evaluator maps them to the dataset's ids itself
            segs = [
                {"id": s["id"], "category_id": s["contiguous_id"], "isthing": s["isthing"]}
                for s in segments
            ]
            checked.append({"panoptic_seg": (torch.from_numpy(ids.astype(np.int32)), segs)})
        super().process(inputs, checked)

    def evaluate(self):
        """``{"panoptic_seg": {"PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st", "SQ_st",
        "RQ_st"}}`` in percent, Python floats (rank 0; other ranks: None)."""
        results = super().evaluate()
        if results is None:
            return None
        return OrderedDict((k, {m: float(v) for m, v in r.items()}) for k, r in results.items())


class CityscapesPanopticEvaluator(_CityscapesEvaluator):
    """Cityscapes panoptic quality by cityscapesscripts' ``evalPanopticSemanticLabeling`` over
    the images processed (their entries of the dataset's ``panoptic_json``). Metadata:
    ``panoptic_json``, ``panoptic_root``, ``gt_dir`` and the two id maps, as Detectron2's
    ``cityscapes_fine_panoptic_*``."""

    def __init__(self, dataset_name):
        super().__init__(dataset_name)
        _check_panoptic_metadata(dataset_name, type(self).__name__)

    def reset(self):
        super().reset()
        self._annotations = []

    def process(self, inputs, outputs):
        """inputs: dicts with ``file_name``; outputs: dicts with ``panoptic_seg``."""
        for inp, out in zip(inputs, outputs):
            stem = os.path.splitext(os.path.basename(inp["file_name"]))[0]
            stem = stem[: -len("_leftImg8bit")] if stem.endswith("_leftImg8bit") else stem
            if "panoptic_seg" not in out:
                raise ValueError(
                    "Dataset '{}': the model output has no 'panoptic_seg' (keys {})".format(
                        self._dataset_name, sorted(out)
                    )
                )
            ids, segments = panoptic_prediction(
                out["panoptic_seg"], self._metadata, self._dataset_name, inp["file_name"]
            )
            png = stem + "_panoptic_pred.png"
            Image.fromarray(id2rgb(ids)).save(os.path.join(self._temp_dir, png))
            segments = [{"id": s["id"], "category_id": s["category_id"]} for s in segments]
            self._annotations.append(
                {"image_id": stem, "file_name": png, "segments_info": segments}
            )

    def evaluate(self):
        """
        Returns:
            dict: in percent (rank 0; other ranks: None),
            ``{"cityscapes_panoptic_seg": {"PQ", "SQ", "RQ", "PQ_th", ..., "PQ-<class>", ...}}``.
        """
        comm.synchronize()
        gathered = comm.gather(self._annotations, dst=0)
        if not comm.is_main_process():
            return None
        import cityscapesscripts.evaluation.evalPanopticSemanticLabeling as cs_eval

        _cityscapes_module(cs_eval)
        annotations = list({a["image_id"]: a for part in gathered for a in part}.values())
        with open(self._metadata.panoptic_json) as f:
            gt = json.load(f)
        known = {a["image_id"] for a in gt["annotations"]}
        unknown = sorted({a["image_id"] for a in annotations} - known)
        if unknown:
            raise ValueError(
                "Dataset '{}': images {} are not in its panoptic_json '{}'".format(
                    self._dataset_name, unknown[:5], self._metadata.panoptic_json
                )
            )
        done = {a["image_id"] for a in annotations}
        gt["annotations"] = [a for a in gt["annotations"] if a["image_id"] in done]
        gt["images"] = [i for i in gt.get("images", []) if i["id"] in done]
        gt_json, pred_json = (
            os.path.join(self._temp_dir, n) for n in ("gt_panoptic.json", "pred_panoptic.json")
        )
        with open(gt_json, "w") as f:
            json.dump(gt, f)
        with open(pred_json, "w") as f:
            json.dump({"annotations": annotations}, f)
        logger.info(
            "Evaluating {} images with cityscapesscripts (panoptic) ...".format(len(annotations))
        )
        if not annotations:
            self._cleanup()
            return OrderedDict(cityscapes_panoptic_seg={})
        with contextlib.redirect_stdout(io.StringIO()):
            pq_res = cs_eval.evaluatePanoptic(
                gt_json,
                os.path.abspath(self._metadata.panoptic_root),
                pred_json,
                self._temp_dir,
                os.path.join(self._temp_dir, "resultPanopticSemanticLabeling.json"),
            )
        self._cleanup()
        # per-class keys for the classes in the ground truth or the predictions of these images
        seen = {
            s["category_id"] for a in gt["annotations"] + annotations for s in a["segments_info"]
        }
        categories = {c["id"]: c for c in gt["categories"] if c["id"] in seen}
        ret = OrderedDict(cityscapes_panoptic_seg=pq_results(pq_res, categories))
        logger.info(
            "Cityscapes panoptic results: {}".format(
                {k: round(v, 3) for k, v in ret["cityscapes_panoptic_seg"].items() if "-" not in k}
            )
        )
        return ret
