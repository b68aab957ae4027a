"""Class names that travel with the model, and checks that weights fit the config and the data.

- The trainer saves the training dataset's metadata (``thing_classes``, ``stuff_classes``, their
  colors and id maps, the dataset name) in every checkpoint it writes, under the key
  :data:`CHECKPOINT_KEY` (a :class:`DatasetMetadataCheckpointable`).
- :func:`load_weights_for_inference` loads ``MODEL.WEIGHTS`` for evaluation or prediction: a
  weight whose shape does not fit the model built from the config (which fvcore would skip with
  a warning, leaving that layer random) is an error naming the class-count key, and the saved
  metadata is returned.
- :func:`model_metadata` chooses the names to draw with: ``--class-names`` > the checkpoint's >
  the config's dataset (with a warning naming it) > class numbers (with a warning); names whose
  count differs from the model's classes are never used (a warning names both).
- :func:`check_eval_datasets`: before ``--eval-only``, the class count of every ``DATASETS.TEST``
  must equal the config's.
- :class:`Predictor`: Detectron2's ``DefaultPredictor`` with the two above.
"""

import logging
from typing import Dict, List, Optional, Sequence

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import transforms as T
from detectron2.data.catalog import Metadata
from detectron2.engine import DefaultPredictor
from detectron2.modeling import build_model
from detectron2.utils.file_io import PathManager

from ..checkpoint.core import read_checkpoint_dict
from ..data.panoptic import panoptic_class_maps
from ..modeling.solo.panoptic import panoptic_class_counts_checked

__all__ = [
    "CHECKPOINT_KEY",
    "DatasetMetadataCheckpointable",
    "WeightsMismatchError",
    "class_count_spec",
    "dataset_metadata",
    "training_metadata",
    "read_checkpoint_metadata",
    "load_weights_for_inference",
    "model_metadata",
    "check_eval_datasets",
    "Predictor",
]

logger = logging.getLogger(__name__)

#: key of the training dataset's metadata in the checkpoints the trainer writes
CHECKPOINT_KEY = "dataset_metadata"
_META_KEYS = (
    "thing_classes",
    "thing_colors",
    "stuff_classes",
    "stuff_colors",
    "thing_dataset_id_to_contiguous_id",
    "stuff_dataset_id_to_contiguous_id",
)


class WeightsMismatchError(ValueError):
    """``MODEL.WEIGHTS`` does not fit the model of the config (e.g. another class count)."""


def class_count_spec(cfg):
    """``(key, count, metadata attribute)`` of the model's classes: SOLO family
    ``("MODEL.SOLO.NUM_CLASSES", n, "thing_classes")``, semantic models
    ``("MODEL.SEM_SEG_HEAD.NUM_CLASSES", n, "stuff_classes")``; None for other models."""
    arch = cfg.MODEL.META_ARCHITECTURE.upper()
    if "SOLO" in arch:
        return "MODEL.SOLO.NUM_CLASSES", int(cfg.MODEL.SOLO.NUM_CLASSES), "thing_classes"
    if "SEGMENTOR" in arch:
        return (
            "MODEL.SEM_SEG_HEAD.NUM_CLASSES",
            int(cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES),
            "stuff_classes",
        )
    return None


def _plain(value):
    """Metadata values as plain Python lists/dicts/ints/strs (loadable with ``weights_only``)."""
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return value.item()
    return value


def dataset_metadata(name: str) -> Dict:
    """The class metadata of registered dataset ``name`` (those of ``thing_classes``,
    ``thing_colors``, ``stuff_classes``, ``stuff_colors`` and the two id maps it has) and
    ``dataset``: ``name``."""
    meta = MetadataCatalog.get(name)
    out = {k: _plain(meta.get(k)) for k in _META_KEYS if meta.get(k) is not None}
    out["dataset"] = name
    return out


def training_metadata(cfg) -> Dict:
    """:func:`dataset_metadata` of ``DATASETS.TRAIN[0]`` (``{}`` without training datasets); a
    warning when another training dataset has other class names."""
    if not cfg.DATASETS.TRAIN:
        return {}
    first = dataset_metadata(cfg.DATASETS.TRAIN[0])
    for name in cfg.DATASETS.TRAIN[1:]:
        other = dataset_metadata(name)
        for key in ("thing_classes", "stuff_classes"):
            if key in first and key in other and first[key] != other[key]:
                logger.warning(
                    "Training datasets '%s' and '%s' have different %s (%s vs %s); the checkpoints "
                    "record those of '%s'",
                    cfg.DATASETS.TRAIN[0],
                    name,
                    key,
                    first[key],
                    other[key],
                    cfg.DATASETS.TRAIN[0],
                )
    return first


class DatasetMetadataCheckpointable:
    """A checkpointable of :class:`~detectron2.checkpoint.DetectionCheckpointer`: saves the
    training dataset's metadata under :data:`CHECKPOINT_KEY`. Loading (resume, fine-tuning)
    keeps the metadata of the dataset being trained; what the file held is in ``loaded``."""

    def __init__(self, metadata: Dict):
        self.metadata = dict(metadata)
        self.loaded = None

    def state_dict(self):
        return dict(self.metadata)

    def load_state_dict(self, state):
        self.loaded = state


class _InferenceCheckpointer(DetectionCheckpointer):
    """Records the weights fvcore skipped for their shape (``incorrect_shapes``)."""

    incorrect_shapes: List = []

    def _load_model(self, checkpoint):
        incompatible = super()._load_model(checkpoint)
        self.incorrect_shapes = list(getattr(incompatible, "incorrect_shapes", []) or [])
        return incompatible


def read_checkpoint_metadata(path: str) -> Optional[Dict]:
    """The dataset metadata saved in checkpoint ``path`` by solo_d2's trainer, or None (a
    checkpoint written before solo_d2 saved it, a converted or foreign one)."""
    if not path:
        return None
    return read_checkpoint_dict(PathManager.get_local_path(path)).get(CHECKPOINT_KEY) or None


def _mismatch_message(cfg, path, incorrect, meta):
    shown = "; ".join(
        "{} has shape {} in the checkpoint, {} in the model".format(k, tuple(a), tuple(b))
        for k, a, b in incorrect[:3]
    )
    more = " (and {} more)".format(len(incorrect) - 3) if len(incorrect) > 3 else ""
    keys = []
    arch = cfg.MODEL.META_ARCHITECTURE
    if "SOLO" in arch.upper():
        keys.append(("MODEL.SOLO.NUM_CLASSES", int(cfg.MODEL.SOLO.NUM_CLASSES)))
    if "SEGMENTOR" in arch.upper() or arch == "SOLOPanoptic":
        keys.append(("MODEL.SEM_SEG_HEAD.NUM_CLASSES", int(cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES)))
    fixes = []
    for key, value in keys:
        for _, ck, mo in incorrect:
            if (
                len(ck) == len(mo)
                and ck[0] != mo[0]
                and tuple(ck[1:]) == tuple(mo[1:])
                and mo[0] == value
            ):
                fixes.append(
                    "the checkpoint was trained for {} classes and {} is {}: set {} {}".format(
                        ck[0], key, value, key, ck[0]
                    )
                )
                break
    names = ""
    if meta:
        for attr in ("thing_classes", "stuff_classes"):
            if meta.get(attr):
                names = " It was trained on dataset '{}' with {} {} ({}).".format(
                    meta.get("dataset", "?"),
                    len(meta[attr]),
                    attr,
                    ", ".join(map(str, meta[attr][:10])),
                )
                break
    fix = (
        "; ".join(fixes)
        if fixes
        else (
            "the config builds another architecture than the one these weights were trained with; "
            "use the config "
            "they were trained with"
        )
    )
    return (
        "MODEL.WEIGHTS '{}' does not fit the model of this config ({}): {}{}. Those layers would "
        "stay "
        "randomly initialized, so evaluating or predicting with them is refused: {}.{}".format(
            path, arch, shown, more, fix, names
        )
    )


def load_weights_for_inference(cfg, model, weights: Optional[str] = None) -> Optional[Dict]:
    """Load ``weights`` (default ``cfg.MODEL.WEIGHTS``) into ``model`` for evaluation or
    prediction. Raises :class:`WeightsMismatchError` naming the layers and the class-count key
    when a weight's shape does not fit the model (a checkpoint of another class count), instead
    of fvcore's warning. Returns the dataset metadata saved in the checkpoint, or None."""
    path = cfg.MODEL.WEIGHTS if weights is None else weights
    checkpointer = _InferenceCheckpointer(model)
    extra = checkpointer.load(path) if path else {}
    meta = extra.get(CHECKPOINT_KEY) if isinstance(extra, dict) else None
    if checkpointer.incorrect_shapes:
        raise WeightsMismatchError(
            _mismatch_message(cfg, path, checkpointer.incorrect_shapes, meta)
        )
    return meta or None


def _names_text(names):
    return ", ".join(map(str, names[:10])) + (", ..." if len(names) > 10 else "")


def model_metadata(
    cfg,
    checkpoint_meta: Optional[Dict] = None,
    class_names: Optional[Sequence[str]] = None,
    override_flag: str = "--class-names",
) -> Dict:
    """The metadata to draw (and export) the model's predictions with: a dict with the
    model's class attribute (``thing_classes`` for the SOLO family, ``stuff_classes`` for
    semantic models), its colors when known, and ``source`` (where the names come from).

    In order: ``class_names`` (``--class-names``), the names saved in the checkpoint
    (``checkpoint_meta``), the names of the config's dataset (``DATASETS.TEST[0]``, else
    ``TRAIN[0]``; with a warning naming the dataset, as they may be someone else's), else none
    (a warning: labels are class numbers). Names whose count differs from the model's classes are
    not used, with a warning naming both. The panoptic model (``SOLOPanoptic``) uses the
    checkpoint's whole metadata, else its dataset's.
    """
    spec = class_count_spec(cfg)
    if spec is None:
        return {"source": "none"}
    key, count, attr = spec
    colors_attr = attr.replace("classes", "colors")

    if cfg.MODEL.META_ARCHITECTURE == "SOLOPanoptic":
        if class_names is not None:
            logger.warning(
                "%s is not used for the panoptic model: its names come from the checkpoint or from "
                "DATASETS.TEST[0]",
                override_flag,
            )
        if checkpoint_meta and checkpoint_meta.get("thing_classes"):
            return dict(
                checkpoint_meta,
                source="checkpoint (dataset '{}')".format(checkpoint_meta.get("dataset")),
            )
        for name in list(cfg.DATASETS.TEST) + list(cfg.DATASETS.TRAIN):
            meta = dataset_metadata(name)
            if meta.get("thing_classes") and meta.get("stuff_classes"):
                if cfg.MODEL.WEIGHTS:
                    logger.warning(
                        "MODEL.WEIGHTS '%s' holds no class names: labelling with those of dataset "
                        "'%s'",
                        cfg.MODEL.WEIGHTS,
                        name,
                    )
                return dict(meta, source="dataset '{}'".format(name))
        stuff = int(cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES)
        logger.warning(
            "No class names for the panoptic model (none in MODEL.WEIGHTS '%s' nor in the config's "
            "datasets): labels are class numbers",
            cfg.MODEL.WEIGHTS,
        )
        return {
            "thing_classes": [str(k) for k in range(count)],
            "stuff_classes": ["things"] + [str(k) for k in range(1, stuff)],
            "source": "none",
        }

    if class_names is not None:
        class_names = list(class_names)
        if len(class_names) == count:
            return {attr: class_names, "source": override_flag}
        logger.warning(
            "%s gives %d names (%s) but the model has %d classes (%s %d): they are not used",
            override_flag,
            len(class_names),
            _names_text(class_names),
            count,
            key,
            count,
        )
    if checkpoint_meta and checkpoint_meta.get(attr):
        names = list(checkpoint_meta[attr])
        if len(names) == count:
            out = {
                attr: names,
                "source": "checkpoint (dataset '{}')".format(checkpoint_meta.get("dataset", "?")),
            }
            colors = checkpoint_meta.get(colors_attr)
            if colors and len(colors) == count:
                out[colors_attr] = colors
            return out
        logger.warning(
            "The checkpoint holds %d class names (%s, dataset '%s') but the model has %d classes "
            "(%s %d): "
            "they are not used; pass %s",
            len(names),
            _names_text(names),
            checkpoint_meta.get("dataset"),
            count,
            key,
            count,
            override_flag,
        )
    weights = cfg.MODEL.WEIGHTS
    for field in ("TEST", "TRAIN"):
        datasets = list(getattr(cfg.DATASETS, field))
        if not datasets:
            continue
        name = datasets[0]
        meta = MetadataCatalog.get(name)
        names = meta.get(attr)
        if not names:
            continue
        names = list(names)
        if len(names) != count:
            logger.warning(
                "Dataset '%s' (DATASETS.%s[0]) has %d %s (%s) but the model has %d classes (%s "
                "%d): its "
                "names are not used; pass %s",
                name,
                field,
                len(names),
                attr,
                _names_text(names),
                count,
                key,
                count,
                override_flag,
            )
            break
        if weights:
            logger.warning(
                "MODEL.WEIGHTS '%s' holds no class names (written before solo_d2 saved them, or "
                "converted): "
                "labelling with the %d %s of dataset '%s' (DATASETS.%s[0]): %s. Pass %s if these "
                "are not "
                "the classes the weights were trained on.",
                weights,
                count,
                attr,
                name,
                field,
                _names_text(names),
                override_flag,
            )
        out = {attr: names, "source": "dataset '{}' (DATASETS.{}[0])".format(name, field)}
        colors = meta.get(colors_attr)
        if colors and len(colors) == count:
            out[colors_attr] = _plain(colors)
        return out
    logger.warning(
        "No class names for the model's %d classes (%s %d; none in MODEL.WEIGHTS '%s' nor in the "
        "config's "
        "datasets): labels are class numbers; pass %s name1,name2,...",
        count,
        key,
        count,
        weights,
        override_flag,
    )
    out = {"source": "none"}
    if attr == "stuff_classes":  # Detectron2's Visualizer needs names for a semantic map
        out[attr] = [str(i) for i in range(count)]
    return out


def check_eval_datasets(cfg, checkpoint_meta: Optional[Dict] = None) -> None:
    """Before evaluation: the class count of every ``DATASETS.TEST`` must equal the config's
    (``ValueError`` naming the key, the dataset and both counts; the evaluator would otherwise
    compare class k of the model with class k of another list). A warning when the checkpoint's
    class names differ from the dataset's. The panoptic model's counts are checked by
    ``panoptic_class_counts_checked``."""
    spec = class_count_spec(cfg)
    if spec is None:
        return
    key, count, attr = spec
    registered = set(DatasetCatalog.list())
    for name in cfg.DATASETS.TEST:
        if name not in registered:
            continue  # check_dataset names unregistered datasets
        if cfg.MODEL.META_ARCHITECTURE == "SOLOPanoptic":
            panoptic_class_counts_checked(cfg, name)
            continue
        meta = MetadataCatalog.get(name)
        if meta.get(attr) is None:
            DatasetCatalog.get(name)  # e.g. register_coco_instances: the loader sets thing_classes
        names = meta.get(attr)
        if names is None:
            logger.warning(
                "Dataset '%s' has no metadata %s; %s=%d is not checked against it",
                name,
                attr,
                key,
                count,
            )
            continue
        if len(names) != count:
            raise ValueError(
                "{}={} does not match the evaluation dataset '{}', which has {} {} ({}): the "
                "evaluation would "
                "compare the model's class k with the dataset's class k. Evaluate weights trained "
                "for {} classes "
                "with {} {}, or another dataset.".format(
                    key,
                    count,
                    name,
                    len(names),
                    attr,
                    _names_text(list(names)),
                    len(names),
                    key,
                    len(names),
                )
            )
        saved = (checkpoint_meta or {}).get(attr)
        if saved and list(saved) != list(names):
            logger.warning(
                "The checkpoint was trained on classes %s (dataset '%s') and is evaluated on "
                "dataset '%s' "
                "with classes %s: the evaluation matches them by index",
                _names_text(list(saved)),
                checkpoint_meta.get("dataset"),
                name,
                _names_text(list(names)),
            )


def metadata_object(meta: Dict, name: str = "__solo_d2_model") -> Metadata:
    """A Detectron2 ``Metadata`` (for the ``Visualizer``) from a :func:`model_metadata` dict."""
    fields = {k: v for k, v in meta.items() if k in _META_KEYS}
    return Metadata(name=name, **fields)


class Predictor(DefaultPredictor):
    """Detectron2's ``DefaultPredictor`` (same call: a BGR ``HxWx3`` uint8 image in, the model's
    outputs for it out), whose weights are loaded with :func:`load_weights_for_inference` (weights
    of another class count are refused) and whose ``metadata`` holds the class names of
    :func:`model_metadata` (the checkpoint's, or ``class_names``) for the ``Visualizer``."""

    def __init__(self, cfg, class_names: Optional[Sequence[str]] = None):
        self.cfg = cfg.clone()  # cfg can be modified by model
        self.model = build_model(self.cfg)
        self.model.eval()
        self.checkpoint_metadata = load_weights_for_inference(self.cfg, self.model)
        self.class_metadata = model_metadata(self.cfg, self.checkpoint_metadata, class_names)
        self.metadata = metadata_object(self.class_metadata)
        combine = getattr(self.model, "combine_cfg", None)
        if (
            combine is not None
            and combine.get("thing_ids") is None
            and "stuff_dataset_id_to_contiguous_id" in self.class_metadata
        ):
            # SOLOPanoptic built without a registered dataset: write the training set's category ids
            combine["thing_ids"], combine["stuff_ids"] = panoptic_class_maps(self.metadata)
        self.aug = T.ResizeShortestEdge(
            [cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST
        )
        self.input_format = cfg.INPUT.FORMAT
        assert self.input_format in ["RGB", "BGR"], self.input_format
