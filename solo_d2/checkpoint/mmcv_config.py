"""The training config that mmcv / mmdetection checkpoints carry in ``meta``,
read without running it.

mmdetection v1 (the official SOLO code) and 2.x save ``meta = {"mmdet_version": ...,
"config": cfg.text, "CLASSES": ...}``: the config *file text*, Python code such as
``model = dict(type='SOLOv2', bbox_head=dict(type='SOLOv2LightHead', stacked_convs=3, ...))``.
It is parsed with :mod:`ast` and only literals are evaluated (numbers, strings, tuples, lists,
dicts, ``dict(k=v, ...)`` calls and names assigned earlier in the file); nothing is executed,
anything else reads as unknown. :func:`head_facts` extracts what the weights do not store:
the scale ranges, the grids and the test input size, and what they do (tower depth and width)
for a cross-check.
"""

import ast
from typing import Dict, Optional

__all__ = ["parse_config_text", "config_text_of", "head_facts"]


class _Unknown:
    """A value the safe evaluator does not compute (code, arithmetic, unknown names)."""

    def __repr__(self):
        return "<unknown>"


UNKNOWN = _Unknown()


def _literal(node, env: Dict[str, object]):
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, (ast.Tuple, ast.List)):
        items = [_literal(e, env) for e in node.elts]
        return tuple(items) if isinstance(node, ast.Tuple) else items
    if isinstance(node, ast.Dict):
        out = {}
        for k, v in zip(node.keys, node.values):
            key = None if k is None else _literal(k, env)
            if isinstance(key, (str, int)):
                out[key] = _literal(v, env)
        return out
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "dict"
        and not node.args
    ):
        return {kw.arg: _literal(kw.value, env) for kw in node.keywords if kw.arg is not None}
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _literal(node.operand, env)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.Name):
        return env.get(node.id, UNKNOWN)
    return UNKNOWN


def parse_config_text(text: str) -> Dict[str, object]:
    """Top-level ``name = <literal>`` assignments of an mmcv config file text, in order (a later
    assignment replaces an earlier one). Raises ValueError if the text is not Python."""
    try:
        tree = ast.parse(text)
    except SyntaxError as e:
        raise ValueError(f"config text is not Python: {e}") from None
    env: Dict[str, object] = {}
    for stmt in tree.body:
        if (
            isinstance(stmt, ast.Assign)
            and len(stmt.targets) == 1
            and isinstance(stmt.targets[0], ast.Name)
        ):
            env[stmt.targets[0].id] = _literal(stmt.value, env)
    return env


def config_text_of(meta) -> Optional[str]:
    """The config file text in a checkpoint's ``meta`` (``meta["config"]``, mmengine's
    ``meta["cfg"]``), or None."""
    if not isinstance(meta, dict):
        return None
    for key in ("config", "cfg"):
        if isinstance(meta.get(key), str) and meta[key].strip():
            return meta[key]
    return None


def _known(v):
    return v is not None and not isinstance(v, _Unknown)


def _pairs(v):
    """``((lo, hi), ...)`` -> ``[[lo, hi], ...]`` or None."""
    if (
        isinstance(v, (list, tuple))
        and v
        and all(
            isinstance(p, (list, tuple))
            and len(p) == 2
            and all(isinstance(x, (int, float)) for x in p)
            for p in v
        )
    ):
        return [list(p) for p in v]
    return None


def _test_size(env) -> Optional[tuple]:
    """``(short, long)`` side of the single test scale of ``test_pipeline`` (``MultiScaleFlipAug``
    ``img_scale=(long, short)``), or None."""
    pipeline = env.get("test_pipeline")
    if not isinstance(pipeline, list):
        return None
    for step in pipeline:
        if isinstance(step, dict) and step.get("type") == "MultiScaleFlipAug":
            scale = step.get("img_scale")
            if isinstance(scale, list) and len(scale) == 1:
                scale = scale[0]
            if (
                isinstance(scale, tuple)
                and len(scale) == 2
                and all(isinstance(s, int) for s in scale)
            ):
                return min(scale), max(scale)
    return None


def head_facts(text: str) -> Dict[str, object]:
    """What a SOLO-family config text says about its head, as a dict with any of:
    ``type`` (e.g. ``"SOLOv2LightHead"``), ``stacked_convs``, ``channels`` (``seg_feat_channels``,
    2.x ``feat_channels``), ``scale_ranges`` (``[[lo, hi], ...]``), ``num_grids``, ``sigma``,
    ``use_dcn_in_tower``, ``type_dcn``, ``test_size`` (``(short, long)``). Keys the text does
    not set literally are left out. Raises ValueError if the text is not Python or has no
    ``model = dict(...)`` with a ``bbox_head`` (v1) or ``mask_head`` (2.x/3.x)."""
    env = parse_config_text(text)
    model = env.get("model")
    head = None
    if isinstance(model, dict):
        head = (
            model.get("bbox_head")
            if isinstance(model.get("bbox_head"), dict)
            else model.get("mask_head")
        )
    if not isinstance(head, dict):
        raise ValueError(
            "config text has no model = dict(..., bbox_head=dict(...) or mask_head=dict(...))"
        )
    facts: Dict[str, object] = {}
    for key, names in (
        ("type", ("type",)),
        ("stacked_convs", ("stacked_convs",)),
        ("channels", ("seg_feat_channels", "feat_channels")),
        ("sigma", ("sigma",)),
        ("use_dcn_in_tower", ("use_dcn_in_tower",)),
        ("type_dcn", ("type_dcn",)),
    ):
        for n in names:
            if _known(head.get(n)):
                facts[key] = head[n]
                break
    ranges = _pairs(head.get("scale_ranges"))
    if ranges is not None:
        facts["scale_ranges"] = ranges
    grids = head.get("num_grids")
    if isinstance(grids, (list, tuple)) and grids and all(isinstance(g, int) for g in grids):
        facts["num_grids"] = list(grids)
    size = _test_size(env)
    if size is not None:
        facts["test_size"] = size
    return facts
