"""Baselines and inputs of the benchmarks (``tools/benchmark.py``, :mod:`benchmarks.runner`).

The full runs compare solo_d2 with AdelaiDet's own code, loaded at run time from the checkout
named by ``ADELAIDET_ROOT`` (:mod:`benchmarks.adelaidet_port`). The re-implementations
here (AdelaiDet's SOLOv2 post-processing and target loops, the references' one-matmul Matrix
NMS) serve ``--quick`` runs (CI has no checkout);
``tests/benchmarks/test_benchmark_baselines.py`` checks them equal to the port once (when
``ADELAIDET_ROOT`` is set) and to solo_d2. solo_d2's previous
paste is a baseline of the paste section. The inputs are synthetic (head outputs shaped like
SOLOv2 R50's, random disc instances, training batches).
"""

import math

import torch
import torch.nn.functional as F

import solo_d2  # noqa: F401  (registration of the models)
from solo_d2.modeling.solo.losses import indexed_dice_loss
from solo_d2.modeling.solo.matrix_nms import mask_iou_matrix
from solo_d2.modeling.solo.postprocess import masks_to_boxes, point_nms
from solo_d2.modeling.solo.targets import solo_targets

GRIDS = [40, 36, 24, 16, 12]
RANGES = [(1, 96), (48, 192), (96, 384), (192, 768), (384, 2048)]
STRIDES = [8, 8, 16, 32, 32]


def synthetic_solov2_outputs(
    num_candidates, size=(800, 1216), dim=256, num_objects=60, seed=0, scores=(0.12, 0.97)
):
    """Head outputs of one image shaped like SOLOv2 R50's, with object-like masks.

    Mask features are ``dim - 1`` Gaussian blobs and a constant channel; the kernel of a
    candidate cell selects one object's blob (``mask = sigmoid(12 blob - 6 + noise)``), so
    several cells predict each object (duplicates for the NMS). About ``num_candidates``
    (cell, class) pairs pass the 0.1 score threshold after point NMS, one class per cell, with
    category scores uniform in ``scores``.

    Returns ``(cate_logits, mask_outputs, padded_hw)`` as ``SOLOv2Head`` returns them.
    """
    g = torch.Generator().manual_seed(seed)
    h, w = size[0] // 4, size[1] // 4
    ys = torch.arange(h, dtype=torch.float32)[:, None]
    xs = torch.arange(w, dtype=torch.float32)[None, :]
    cy = torch.rand(dim - 1, generator=g) * h
    cx = torch.rand(dim - 1, generator=g) * w
    sy = (0.03 + 0.2 * torch.rand(dim - 1, generator=g)) * h
    sx = (0.03 + 0.2 * torch.rand(dim - 1, generator=g)) * w
    blobs = torch.exp(
        -0.5
        * (
            ((ys - cy[:, None, None]) / sy[:, None, None]) ** 2
            + ((xs - cx[:, None, None]) / sx[:, None, None]) ** 2
        )
    )
    feats = torch.cat([blobs, torch.ones(1, h, w)])[None]  # [1, D, h, w]
    obj_class = torch.randint(0, 80, (num_objects,), generator=g)
    total = sum(s * s for s in GRIDS)
    cells = torch.randperm(total, generator=g)[:num_candidates]
    obj = torch.randint(0, num_objects, (num_candidates,), generator=g)
    kernels_flat = torch.randn(total, dim, generator=g) * 0.05
    kernels_flat[cells, obj] += 12.0
    kernels_flat[:, dim - 1] = -6.0
    cate_flat = torch.full((total, 80), -8.0)
    probs = scores[0] + (scores[1] - scores[0]) * torch.rand(num_candidates, generator=g)
    cate_flat[cells, obj_class[obj]] = torch.log(probs / (1 - probs))
    cate_logits, mask_outputs, start = [], [], 0
    for s in GRIDS:
        part = slice(start, start + s * s)
        cate_logits.append(cate_flat[part].t().reshape(1, 80, s, s).contiguous())
        mask_outputs.append((kernels_flat[part].t().reshape(1, dim, s, s).contiguous(), feats))
        start += s * s
    return cate_logits, mask_outputs, size


def test_cfg_of(model):
    """The inference hyperparameters of a solo_d2 ``SOLO`` model as :func:`adelaidet_postprocess`
    reads them."""
    return {
        "score_thr": model.score_thresh,
        "mask_thr": model.mask_thresh,
        "nms_pre": model.nms_pre,
        "update_thr": model.update_thresh,
        "max_per_img": model.max_per_img,
        "sigma": model.nms_sigma,
    }


def adelaidet_postprocess(
    cate_logits, mask_outputs, image_size, output_size, test_cfg, strides=STRIDES
):
    """Baseline of ``--quick`` runs: AdelaiDet's SOLOv2 ``inference_single_image`` (one image,
    Matrix NMS) re-implemented; ``tests/benchmarks/test_benchmark_baselines.py`` checks it equal
    to the port's own code (:mod:`benchmarks.adelaidet_port`), which the full runs time."""
    cate = torch.cat(
        [point_nms(c.sigmoid()).permute(0, 2, 3, 1).reshape(-1, c.shape[1]) for c in cate_logits]
    )
    kernels = torch.cat([k.permute(0, 2, 3, 1).reshape(-1, k.shape[1]) for k, _ in mask_outputs])
    seg = mask_outputs[0][1]
    inds = cate > test_cfg["score_thr"]
    cate_scores = cate[inds]
    inds = inds.nonzero()
    labels = inds[:, 1]
    kernel = kernels[inds[:, 0]]
    grids = [k.shape[-1] for k, _ in mask_outputs]
    stride_of_cell = torch.cat(
        [torch.full((g * g,), float(s), device=cate.device) for g, s in zip(grids, strides)]
    )[inds[:, 0]]
    n, d = kernel.shape
    seg_preds = F.conv2d(seg, kernel.view(n, d, 1, 1)).squeeze(0).sigmoid()
    seg_masks = seg_preds > test_cfg["mask_thr"]
    sum_masks = seg_masks.sum((1, 2)).float()
    keep = sum_masks > stride_of_cell
    seg_preds, seg_masks, sum_masks = seg_preds[keep], seg_masks[keep], sum_masks[keep]
    cate_scores, labels = cate_scores[keep], labels[keep]
    cate_scores = cate_scores * ((seg_preds * seg_masks.float()).sum((1, 2)) / sum_masks)
    order = torch.argsort(cate_scores, descending=True)[: test_cfg["nms_pre"]]
    seg_masks, seg_preds, sum_masks = seg_masks[order], seg_preds[order], sum_masks[order]
    cate_scores, labels = cate_scores[order], labels[order]
    # AdelaiDet's matrix_nms (gaussian kernel)
    n = len(labels)
    flat = seg_masks.reshape(n, -1).float()
    inter = flat @ flat.t()
    sx = sum_masks.expand(n, n)
    iou = (inter / (sx + sx.t() - inter)).triu(diagonal=1)
    lx = labels.expand(n, n)
    label_matrix = (lx == lx.t()).float().triu(diagonal=1)
    compensate = (iou * label_matrix).max(0)[0].expand(n, n).t()
    decay_iou = iou * label_matrix
    sigma = test_cfg["sigma"]
    coef = (torch.exp(-sigma * decay_iou**2) / torch.exp(-sigma * compensate**2)).min(0)[0]
    cate_scores = cate_scores * coef
    keep = cate_scores >= test_cfg["update_thr"]
    seg_preds, cate_scores, labels = seg_preds[keep], cate_scores[keep], labels[keep]
    order = torch.argsort(cate_scores, descending=True)[: test_cfg["max_per_img"]]
    seg_preds, cate_scores, labels = seg_preds[order], cate_scores[order], labels[order]
    h, w = image_size
    fh, fw = seg.shape[-2:]
    seg_preds = F.interpolate(seg_preds[None], size=(4 * fh, 4 * fw), mode="bilinear")[:, :, :h, :w]
    masks = (
        F.interpolate(seg_preds, size=tuple(output_size), mode="bilinear")[0] > test_cfg["mask_thr"]
    )
    return masks, cate_scores, labels


def build_solov2_model(quick):
    from detectron2.modeling import build_model

    from solo_d2.checkpoint.core import build_cfg
    from solo_d2.model_zoo import get_config_file

    opts = ["MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64"] if quick else []
    cfg = build_cfg(get_config_file("SOLOv2/R50_3x.yaml"), opts)
    return build_model(cfg).eval()


def solo_d2_postprocess(model, cate_logits, mask_outputs, padded_hw, output_size=None):
    from detectron2.structures import ImageList

    images = ImageList(
        torch.empty(1, 3, *padded_hw, device=cate_logits[0].device), [tuple(padded_hw)]
    )
    inputs = [{"height": (output_size or padded_hw)[0], "width": (output_size or padded_hw)[1]}]
    return model.inference(inputs, images, cate_logits, mask_outputs)[0]["instances"]


def one_matmul_nms(masks, labels, scores):
    """Baseline: the references' Matrix NMS (gaussian, sigma 2): IoUs of all pairs by one
    matmul, then the class mask."""
    iou = mask_iou_matrix(masks).triu(diagonal=1)
    decay = iou * (labels[:, None] == labels[None, :]).triu(diagonal=1).float()
    comp = decay.max(dim=0).values[:, None]
    return scores * torch.exp(-2.0 * (decay**2 - comp**2)).min(dim=0).values


def old_paste(soft_masks, image_size, output_size, threshold=0.5, chunk=32):
    """solo_d2's previous paste: chunks of 32 masks upsampled in float at the output size."""
    k, mh, mw = soft_masks.shape
    out = torch.zeros(k, *output_size, dtype=torch.bool)
    for start in range(0, k, chunk):
        part = F.interpolate(
            soft_masks[start : start + chunk, None], size=(mh * 4, mw * 4), mode="bilinear"
        )
        part = F.interpolate(
            part[:, :, : image_size[0], : image_size[1]], size=tuple(output_size), mode="bilinear"
        )
        out[start : start + chunk] = part[:, 0] > threshold
    return out


def paste_inputs(k, image_size, seed=0):
    g = torch.Generator().manual_seed(seed)
    mh, mw = -(-image_size[0] // 4), -(-image_size[1] // 4)
    masks, _ = random_instances(1, k, mh, mw, seed=seed)
    return masks[0].float() * 0.8 + torch.rand(k, mh, mw, generator=g) * 0.15


def random_instances(batch, n, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    masks, classes = [], []
    yy, xx = torch.arange(h)[:, None], torch.arange(w)[None, :]
    for _ in range(batch):
        cy = torch.randint(0, h, (n, 1, 1), generator=g)
        cx = torch.randint(0, w, (n, 1, 1), generator=g)
        r = torch.randint(4, max(5, min(h, w) // 3), (n, 1, 1), generator=g)
        masks.append(((yy - cy) ** 2 + (xx - cx) ** 2) < r**2)
        classes.append(torch.randint(0, 80, (n,), generator=g))
    return masks, classes


def adelaidet_targets(
    gt_masks,
    gt_classes,
    gt_boxes,
    mask_sizes,
    sigma=0.2,
    num_classes=80,
    grids=GRIDS,
    ranges=RANGES,
):
    """Baseline of ``--quick`` runs (the full runs time the port's own ``get_ground_truth``):
    AdelaiDet's SOLOv2 target loops (``get_ground_truth_single``), per image, level,
    instance and cell: center of mass of the full mask, float32 floor-division cells, the last
    claimant's label, the mask resized per (level, instance) and copied into a new uint8 target
    per claimed cell, stacked per image; targets of the images concatenated and made float as
    AdelaiDet's loss does. Returns per level ``(labels [B, S, S], [(img, instance, cell)],
    mask targets [M, h, w] float)``."""
    out = []
    for s, (lo, hi), size in zip(grids, ranges, mask_sizes):
        all_labels, entries, per_image = [], [], []
        for b, (masks, classes, boxes) in enumerate(zip(gt_masks, gt_classes, gt_boxes)):
            h, w = masks.shape[-2:]
            dev = masks.device
            labels = torch.full((s, s), num_classes, dtype=torch.long, device=dev)
            ins_label = []
            ys_all = torch.arange(h, dtype=torch.float32, device=dev)[:, None]
            xs_all = torch.arange(w, dtype=torch.float32, device=dev)[None, :]
            for n in range(masks.shape[0]):
                bw, bh = float(boxes[n, 2] - boxes[n, 0]), float(boxes[n, 3] - boxes[n, 1])
                if not lo <= math.sqrt(bw * bh) <= hi:
                    continue
                m = masks[n].float()
                area = m.sum()
                if area == 0:
                    continue
                cy = (m * ys_all).sum() / area
                cx = (m * xs_all).sum() / area
                hh, hw = 0.5 * bh * sigma, 0.5 * bw * sigma
                cw, ch = int((cx / w) // (1.0 / s)), int((cy / h) // (1.0 / s))
                top = max(0, int(((cy - hh) / h) // (1.0 / s)), ch - 1)
                down = min(s - 1, int(((cy + hh) / h) // (1.0 / s)), ch + 1)
                left = max(0, int(((cx - hw) / w) // (1.0 / s)), cw - 1)
                right = min(s - 1, int(((cx + hw) / w) // (1.0 / s)), cw + 1)
                labels[top : down + 1, left : right + 1] = classes[n]
                seg_mask = (
                    F.interpolate(m[None, None], size=size, mode="bilinear")[0, 0] >= 0.5
                ).to(torch.uint8)
                for i in range(top, down + 1):
                    for j in range(left, right + 1):
                        cur = torch.zeros(size, dtype=torch.uint8, device=dev)
                        cur[: seg_mask.shape[0], : seg_mask.shape[1]] = seg_mask
                        ins_label.append(cur)
                        entries.append((b, n, i * s + j))
            all_labels.append(labels)
            per_image.append(
                torch.stack(ins_label)
                if ins_label
                else torch.zeros((0, *size), dtype=torch.uint8, device=dev)
            )
        out.append((torch.stack(all_labels), entries, torch.cat(per_image).float()))
    return out


def boxes_of(masks):
    return [masks_to_boxes(m) for m in masks]


def adelaidet_dice(probs, targets):
    """Baseline: AdelaiDet's ``dice_loss`` on dense float targets [M, h, w] -> [M]."""
    p = probs.contiguous().view(probs.shape[0], -1)
    t = targets.contiguous().view(targets.shape[0], -1).float()
    a = torch.sum(p * t, 1)
    b = torch.sum(p * p, 1) + 0.001
    c = torch.sum(t * t, 1) + 0.001
    return 1 - (2 * a) / (b + c)


def targets_and_dice(masks, classes, kw, logits):
    """solo_d2: targets, then the dice loss through the target rows, forward and backward."""
    out = solo_targets(masks, classes, **kw)
    probs = logits.sigmoid().split([t.num_targets for t in out])
    loss = sum(
        indexed_dice_loss(p, t.target_masks, t.target_rows).sum() for p, t in zip(probs, out)
    )
    loss.backward()
    return loss


def adelaidet_targets_and_dice(masks, classes, boxes, sizes, logits, ranges=RANGES):
    """Baseline: AdelaiDet's target loops, then its dice loss on the float targets, forward and
    backward (same probabilities as :func:`targets_and_dice`)."""
    ref = adelaidet_targets(masks, classes, boxes, sizes, ranges=ranges)
    probs = logits.sigmoid().split([r[2].shape[0] for r in ref])
    loss = sum(
        adelaidet_dice(p, r[2]).sum() for p, r in zip(probs, ref) if p.shape[0]
    )  # skips empty levels, as AdelaiDet
    loss.backward()
    return loss


def training_batch(cfg, h, w, num_instances=4, batch=2, seed=3):
    """A training batch for ``cfg``'s model: random ``uint8`` images ``[3, h, w]`` with
    ``num_instances`` random discs (SOLO family: ``instances`` with masks, classes and boxes)
    or random labels (BiSeNet: ``sem_seg [h, w]``)."""
    from detectron2.structures import BitMasks, Boxes, Instances

    g = torch.Generator().manual_seed(seed)
    masks, classes = random_instances(batch, num_instances, h, w, seed=seed)
    out = []
    for m, c in zip(masks, classes):
        img = torch.randint(0, 255, (3, h, w), dtype=torch.uint8, generator=g)
        if cfg.MODEL.META_ARCHITECTURE == "SOLO":
            inst = Instances((h, w))
            inst.gt_masks = BitMasks(m)
            inst.gt_classes = c % cfg.MODEL.SOLO.NUM_CLASSES
            inst.gt_boxes = Boxes(masks_to_boxes(m))
            out.append({"image": img, "instances": inst})
        else:
            sem = torch.randint(0, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, (h, w), generator=g)
            out.append({"image": img, "sem_seg": sem})
    return out
