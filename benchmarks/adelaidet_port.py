"""The detectron2 SOLOv2 port (aim-uofa/AdelaiDet) loaded at run time from a checkout, so that
the benchmarks compare solo_d2 with the port's own code, never a copy of it.

``ADELAIDET_ROOT`` (or ``root=``) names a checkout of https://github.com/aim-uofa/AdelaiDet
(``git clone``, or ``git archive`` of a mirror; measured with 36721221eb57). Of it, only these
files are executed, unchanged:

- ``adet/modeling/solov2/utils.py``, ``loss.py``, ``solov2.py``, imported with importlib as the
  package ``_adelaidet_port.modeling.solov2`` (so their relative imports work) without running
  ``adet/__init__.py``, ``adet/modeling/__init__.py`` or ``adet/modeling/solov2/__init__.py``:
  those import every AdelaiDet model, some of which need AdelaiDet's compiled ops;
- ``adet/config/defaults.py``, for the ``MODEL.SOLOV2.*`` defaults;
- ``configs/SOLOv2/Base-SOLOv2.yaml`` and ``R50_3x.yaml`` (merged by :func:`port_cfg`).

Shims (what the port needs on detectron2 0.6 / torch 2.x / numpy < 1.24 and in a process that
also runs solo_d2), applied around the import and nowhere else:

1. ``adet/config/defaults.py`` adds its keys to detectron2's global default config (it does
   ``from detectron2.config.defaults import _C`` and assigns to it). While it runs,
   ``sys.modules["detectron2.config.defaults"]`` is a stand-in whose ``_C`` is a clone of
   detectron2's, so detectron2's own defaults (and every solo_d2 config built later) stay
   unchanged; the port's config is that clone.
2. ``solov2.py`` registers ``SOLOv2`` in detectron2's ``META_ARCH_REGISTRY``; a registry
   refuses a second object of one name, so an earlier ``SOLOv2`` entry (an installed ``adet``
   imported in the same process; solo_d2 registers ``SOLO``, not ``SOLOv2``) is removed first.
   The modules are loaded once per process (cached in ``sys.modules``).

Nothing else was needed: the port's imports (``detectron2.layers.paste_masks_in_image``,
``fvcore.nn.sigmoid_focal_loss_jit``, ``cv2``) exist in the versions this project pins, and its
code runs unchanged on torch 2.x (its ``torch.meshgrid`` without ``indexing=`` only warns).
"""

import importlib.util
import os
import sys
import types
from dataclasses import dataclass
from typing import Optional

PACKAGE = "_adelaidet_port"
ENV = "ADELAIDET_ROOT"
SOLOV2_FILES = ("utils", "loss", "solov2")


class PortNotFound(RuntimeError):
    """No AdelaiDet checkout: ``ADELAIDET_ROOT`` unset or not a checkout."""


@dataclass
class AdelaiDetSOLOv2:
    """The port's modules: ``solov2`` (``SOLOv2``, its heads), ``utils`` (``point_nms``,
    ``matrix_nms``, ``center_of_mass``, ``imrescale``), ``loss`` (``dice_loss``), the default
    config ``defaults_cfg`` (with ``MODEL.SOLOV2``), and the checkout ``root``."""

    root: str
    solov2: types.ModuleType
    utils: types.ModuleType
    loss: types.ModuleType
    defaults_cfg: object

    @property
    def SOLOv2(self):
        return self.solov2.SOLOv2


def adelaidet_root(root: Optional[str] = None) -> str:
    """The checkout named by ``root`` or ``$ADELAIDET_ROOT``;
    :class:`PortNotFound` if there is none."""
    root = root or os.environ.get(ENV)
    if not root:
        raise PortNotFound(f"set {ENV} to a checkout of aim-uofa/AdelaiDet")
    path = os.path.join(root, "adet", "modeling", "solov2", "solov2.py")
    if not os.path.isfile(path):
        raise PortNotFound(
            f"{ENV}={root} is not an AdelaiDet checkout (no adet/modeling/solov2/solov2.py)"
        )
    return os.path.abspath(root)


def _package(name, path):
    mod = types.ModuleType(name)
    mod.__path__ = [path]
    mod.__package__ = name
    sys.modules[name] = mod
    return mod


def _exec_file(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    try:
        spec.loader.exec_module(mod)
    except BaseException:
        del sys.modules[name]
        raise
    return mod


def _load_defaults(root):
    """``adet/config/defaults.py`` run against a clone of detectron2's default config (shim 1)."""
    import detectron2.config.defaults as d2_defaults

    stand_in = types.ModuleType("detectron2.config.defaults")
    stand_in._C = d2_defaults._C.clone()
    sys.modules["detectron2.config.defaults"] = stand_in
    try:
        mod = _exec_file(
            f"{PACKAGE}.config.defaults", os.path.join(root, "adet", "config", "defaults.py")
        )
    finally:
        sys.modules["detectron2.config.defaults"] = d2_defaults
    return mod._C


def load_adelaidet_solov2(root: Optional[str] = None) -> AdelaiDetSOLOv2:
    """The port's SOLOv2 modules, imported from the checkout ``root`` (default ``$ADELAIDET_ROOT``)
    once per process (see the module's docstring for what is executed and the shims)."""
    root = adelaidet_root(root)
    cached = sys.modules.get(f"{PACKAGE}.modeling.solov2.solov2")
    if cached is not None:
        if getattr(cached, "_adelaidet_root", None) != root:
            raise RuntimeError(
                f"the AdelaiDet port was already loaded from {cached._adelaidet_root}, not {root}"
            )
        pkg = sys.modules[f"{PACKAGE}.modeling.solov2"]
        return pkg._port
    from detectron2.modeling import META_ARCH_REGISTRY

    adet = os.path.join(root, "adet")
    _package(PACKAGE, adet)
    _package(f"{PACKAGE}.config", os.path.join(adet, "config"))
    _package(f"{PACKAGE}.modeling", os.path.join(adet, "modeling"))
    pkg = _package(f"{PACKAGE}.modeling.solov2", os.path.join(adet, "modeling", "solov2"))
    defaults_cfg = _load_defaults(root)
    META_ARCH_REGISTRY._obj_map.pop("SOLOv2", None)  # shim 2
    mods = {}
    for name in SOLOV2_FILES:
        mods[name] = _exec_file(
            f"{PACKAGE}.modeling.solov2.{name}",
            os.path.join(adet, "modeling", "solov2", f"{name}.py"),
        )
        setattr(pkg, name, mods[name])
    mods["solov2"]._adelaidet_root = root
    pkg._port = AdelaiDetSOLOv2(root, mods["solov2"], mods["utils"], mods["loss"], defaults_cfg)
    return pkg._port


def loaded_port() -> Optional[AdelaiDetSOLOv2]:
    """The port if this process loaded it (:func:`load_adelaidet_solov2`), else None."""
    pkg = sys.modules.get(f"{PACKAGE}.modeling.solov2")
    return getattr(pkg, "_port", None)


def port_cfg(port: AdelaiDetSOLOv2, config: str = "R50_3x.yaml", opts=()):
    """The port's config ``configs/SOLOv2/<config>`` on its defaults, on the CPU,
    no weights file."""
    cfg = port.defaults_cfg.clone()
    cfg.merge_from_file(os.path.join(port.root, "configs", "SOLOv2", config))
    cfg.merge_from_list(["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu", *opts])
    return cfg


def build_port_model(port: AdelaiDetSOLOv2, config: str = "R50_3x.yaml", opts=(), seed: int = 0):
    """The port's ``SOLOv2`` of ``configs/SOLOv2/<config>``, with its own initialization under
    ``torch.manual_seed(seed)``, in eval mode, float32."""
    import torch

    torch.manual_seed(seed)
    return port.SOLOv2(port_cfg(port, config, opts)).eval()


def solo_d2_twin(port_model, opts=()):
    """solo_d2's SOLOv2 of the recipe config the ``adelaidet-solov2`` converter names
    (``configs/SOLOv2/R50_3x.yaml`` for R50), with ``port_model``'s weights converted by that
    converter (every converted key used, every parameter filled: only solo_d2's own buffers,
    pixel statistics and cell tables, keep their values), in eval mode."""
    from detectron2.modeling import build_model

    from solo_d2.checkpoint.adelaidet import convert_adelaidet_solov2
    from solo_d2.checkpoint.core import build_cfg

    conv = convert_adelaidet_solov2(
        {k: v.detach().clone() for k, v in port_model.state_dict().items()}
    )
    cfg = build_cfg(conv.config, [*conv.opts, *opts])
    model = build_model(cfg)
    missing, unexpected = model.load_state_dict(conv.state_dict, strict=False)
    # solo_d2's own buffers (pixel statistics, cell tables) are not in AdelaiDet's state dict
    missing = [k for k in missing if k not in dict(model.named_buffers())]
    if missing or unexpected:
        raise RuntimeError(
            "converted AdelaiDet weights do not fit solo_d2: missing "
            f"{missing}, unexpected {unexpected}"
        )
    return model.eval()


# ----------------------------------------------------------------------------- entry points
# The port's own methods, entered where its ``SOLOv2.forward`` enters them (solov2.py, forward:
# eval branch and training branch); only the glue between the head outputs and those calls is here.
def postprocess(
    port: AdelaiDetSOLOv2, model, cate_logits, mask_outputs, image_size, output_size=None
):
    """The port's post-processing of one image from solo_d2-shaped head outputs
    (``cate_logits [1, C, S, S]`` per level, ``mask_outputs`` ``(kernels [1, D, S, S], mask
    features [1, D, h, w])`` per level): its ``point_nms`` of the sigmoid per level, as its
    ``forward`` does, then its ``SOLOv2.inference`` (-> ``inference_single_image``).
    Returns the port's ``Instances``."""
    output_size = tuple(output_size or image_size)
    cate = [port.utils.point_nms(c.sigmoid(), kernel=2).permute(0, 2, 3, 1) for c in cate_logits]
    kernels = [k for k, _ in mask_outputs]
    inputs = [{"height": output_size[0], "width": output_size[1]}]
    return model.inference(cate, kernels, mask_outputs[0][1], [tuple(image_size)], inputs)[0][
        "instances"
    ]


def gt_instances(masks, classes, boxes=None):
    """Detectron2 ``Instances`` of one image as the port's ``get_ground_truth`` reads them
    (``gt_boxes``, ``gt_classes``, ``gt_masks`` as ``BitMasks``); boxes default to the masks'."""
    from detectron2.structures import BitMasks, Boxes, Instances

    from solo_d2.modeling.solo.postprocess import masks_to_boxes

    inst = Instances(tuple(masks.shape[-2:]))
    inst.gt_boxes = Boxes(masks_to_boxes(masks) if boxes is None else boxes)
    inst.gt_classes = classes
    inst.gt_masks = BitMasks(masks)
    return inst


def targets(model, instances, mask_size):
    """The port's ``get_ground_truth`` (per image ``get_ground_truth_single``: its loops)."""
    return model.get_ground_truth(instances, tuple(mask_size))


def training_losses(model, instances, cate_logits, kernels, mask_features):
    """Targets and losses as the port's training ``forward`` computes them from the head
    outputs: ``get_ground_truth`` at the mask features' size, then ``loss``."""
    t = model.get_ground_truth(instances, tuple(mask_features.shape[-2:]))
    return model.loss(cate_logits, kernels, mask_features, t)


def targets_and_dice(port: AdelaiDetSOLOv2, model, instances, mask_size, logits):
    """The port's targets, then its ``dice_loss`` on the same probabilities rows as its loss
    concatenates the targets (per level, images in order), forward and backward. ``logits``:
    ``[M, h, w]`` with M the number of the port's mask targets (:func:`num_mask_targets`)."""
    import torch

    t = targets(model, instances, mask_size)
    per_level = [torch.cat(level) for level in zip(*t[0])]
    probs = logits.sigmoid().split([x.shape[0] for x in per_level])
    loss = sum(port.loss.dice_loss(p, x).sum() for p, x in zip(probs, per_level) if p.shape[0])
    loss.backward()
    return loss


def num_mask_targets(model, instances, mask_size) -> int:
    return sum(x.shape[0] for level in targets(model, instances, mask_size)[0] for x in level)
