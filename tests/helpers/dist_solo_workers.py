"""Worker functions of tests/engine/test_distributed.py (module-level so ``spawn`` can pickle them).

Each worker runs inside :func:`solo_d2.engine.launch` (CPU gloo workers) and writes what it
measured to files in ``out_dir``; the test process compares them with a single-process run.
The model is the tiny synthetic SOLOv2 (R18 with GroupNorm, 64-channel FPN and heads), so
there is no BatchNorm whose statistics would depend on the batch split.
"""

import importlib.util
import json
import os
from datetime import timedelta

import numpy as np
import torch
from detectron2.data import build_detection_test_loader
from detectron2.engine import HookBase
from detectron2.evaluation import inference_on_dataset
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils import comm

import solo_d2  # noqa: F401  (registers the model and the synthetic datasets)
from solo_d2.engine import Trainer, launch, setup_cfg
from solo_d2.engine.trainer import _create_ddp_model
from solo_d2.evaluation import build_evaluator
from tests.helpers import REPO_ROOT

ROOT = str(REPO_ROOT)
CONFIG = os.path.join(ROOT, "configs", "Synthetic", "SOLOv2_R18.yaml")
IMAGE_SIZE = 128

# Small and fast, but still the synthetic SOLOv2 recipe. Untrained SOLO scores start at the
# focal prior (0.01), so the score thresholds are lowered to get predictions to evaluate.
TINY_OPTS = [
    "INPUT.MIN_SIZE_TRAIN",
    "(96, 128)",
    "INPUT.MAX_SIZE_TRAIN",
    "160",
    "INPUT.MIN_SIZE_TEST",
    "128",
    "INPUT.MAX_SIZE_TEST",
    "160",
    "MODEL.SOLO.SCORE_THR",
    "0.0",
    "MODEL.SOLO.UPDATE_THR",
    "0.0",
    "MODEL.SOLO.NMS_PRE",
    "60",
    "MODEL.SOLO.MAX_PER_IMG",
    "30",
    "DATALOADER.NUM_WORKERS",
    "0",
]


def native_conv():
    """Context without oneDNN convolutions: on the test machines their first call spends
    ~10 s generating kernels per process, the native ones start at once (same results up
    to float rounding; both sides of every comparison here run under it)."""
    return torch.backends.mkldnn.flags(enabled=False)


def tiny_cfg(*opts):
    """The synthetic SOLOv2 R18 config with :data:`TINY_OPTS` and ``opts`` (``KEY VALUE`` pairs)."""
    return setup_cfg(CONFIG, TINY_OPTS + list(opts), device="cpu")


# (class, x0, y0, side) of the square objects of each test image: image 1 has more and
# differently sized objects than image 0, so the two have different numbers of positive
# cells; image 2 has none (no positives at all on the worker that gets it).
_OBJECTS = {
    0: [(0, 30, 36, 44)],
    1: [(0, 8, 10, 28), (2, 50, 44, 70), (1, 90, 12, 24)],
    2: [],
}


def make_input(index: int, size: int = IMAGE_SIZE):
    """A deterministic ``size x size`` training input in detectron2's mapped format.

    Returns ``{"image": uint8 [3, H, W], "height", "width", "instances"}`` with
    ``gt_classes`` [N], ``gt_boxes`` [N, 4] and ``gt_masks`` (BitMasks [N, H, W]).
    """
    rng = np.random.default_rng(index)
    image = rng.integers(0, 60, (3, size, size), dtype=np.uint8)
    objs = _OBJECTS[index]
    masks = np.zeros((len(objs), size, size), dtype=bool)
    for i, (cls, x0, y0, side) in enumerate(objs):
        masks[i, y0 : y0 + side, x0 : x0 + side] = True
        image[:, masks[i]] = np.array([200, 80 + 60 * cls, 40], dtype=np.uint8)[:, None]
    inst = Instances((size, size))
    inst.gt_classes = torch.tensor([o[0] for o in objs], dtype=torch.int64)
    boxes = torch.tensor([[x, y, x + s, y + s] for _, x, y, s in objs], dtype=torch.float32)
    inst.gt_boxes = Boxes(boxes.reshape(-1, 4))
    inst.gt_masks = BitMasks(torch.from_numpy(masks))
    return {"image": torch.from_numpy(image), "height": size, "width": size, "instances": inst}


def load_model(state_path, train: bool):
    """The tiny SOLOv2 with the weights saved at ``state_path``."""
    model = build_model(tiny_cfg())
    model.load_state_dict(torch.load(state_path, map_location="cpu"))
    return model.train(train)


def loss_and_grads(model, inputs):
    """Forward + backward of ``model`` (plain or DDP-wrapped) on ``inputs``.

    Returns ``({loss name: float}, {param name: grad tensor})``; names are those of the
    unwrapped model. Raises if a parameter received no gradient.
    """
    losses = model(inputs)
    sum(losses.values()).backward()
    inner = model.module if hasattr(model, "module") else model
    grads = {}
    for name, p in inner.named_parameters():
        if p.grad is None:
            raise AssertionError(f"parameter {name} received no gradient")
        grads[name] = p.grad.detach().clone()
    return {k: v.item() for k, v in losses.items()}, grads


# ---------------------------------------------------------------- workers (run under launch)


def grads_worker(state_path, out_dir, splits):
    """For each split (a tuple of one :func:`make_input` index per rank), rank r does one
    forward/backward on its image through the trainer's DDP wrapper. Saves the worker's
    losses and the DDP-averaged gradients of every split to ``grads_rank{r}.pt``."""
    rank = comm.get_rank()
    torch.manual_seed(1234 + rank)  # weights must come from the state, not the seed
    model = _create_ddp_model(load_model(state_path, train=True))
    results = []
    with native_conv():
        for split in splits:
            model.zero_grad(set_to_none=True)
            results.append(loss_and_grads(model, [make_input(split[rank])]))
    torch.save(results, os.path.join(out_dir, f"grads_rank{rank}.pt"))


class _Snapshot(HookBase):
    """Keeps the weights right after DDP's initial broadcast, before the first step."""

    def before_train(self):
        model = self.trainer.model
        model = model.module if hasattr(model, "module") else model
        self.initial = {k: v.detach().clone() for k, v in model.state_dict().items()}


def train_worker(out_dir, max_iter):
    """``max_iter`` iterations of :class:`solo_d2.engine.Trainer` on synthetic_coco_train
    (1 image per worker); saves this rank's initial and final weights."""
    rank = comm.get_rank()
    torch.manual_seed(100 + rank)  # different random init per rank: DDP must broadcast rank 0's
    cfg = tiny_cfg(
        "DATASETS.TEST",
        "()",
        "SOLVER.IMS_PER_BATCH",
        str(comm.get_world_size()),
        "SOLVER.MAX_ITER",
        str(max_iter),
        "SOLVER.WARMUP_ITERS",
        "0",
        "SOLVER.CHECKPOINT_PERIOD",
        "100000",
        "OUTPUT_DIR",
        os.path.join(out_dir, "train_output"),
    )
    trainer = Trainer(cfg)
    snap = _Snapshot()
    trainer.register_hooks([snap])
    with native_conv():
        trainer.train()
    model = trainer.model.module if hasattr(trainer.model, "module") else trainer.model
    torch.save(
        {
            "initial": snap.initial,
            "final": model.state_dict(),
            "iter": trainer.iter,
            "world": comm.get_world_size(),
        },
        os.path.join(out_dir, f"train_rank{rank}.pt"),
    )


def evaluate(state_path, out_dir, dataset="synthetic_coco_val", distributed=True):
    """``inference_on_dataset`` + :func:`solo_d2.evaluation.build_evaluator` of the saved
    model; returns ``(results, number of images this process ran)``. The COCO evaluator
    writes ``coco_instances_results.json`` to ``out_dir`` (rank 0 only when distributed)."""
    cfg = tiny_cfg()
    model = load_model(state_path, train=False)
    loader = build_detection_test_loader(cfg, dataset)
    evaluator = build_evaluator(cfg, dataset, out_dir, distributed=distributed)
    with torch.no_grad(), native_conv():
        results = inference_on_dataset(model, loader, evaluator)
    return results, len(loader)


def eval_worker(state_path, out_dir):
    """Distributed evaluation; each rank writes ``eval_rank{r}.json`` with what it got."""
    results, num_images = evaluate(state_path, out_dir, distributed=True)
    with open(os.path.join(out_dir, f"eval_rank{comm.get_rank()}.json"), "w") as f:
        json.dump({"results": results, "num_images": num_images}, f)


# ---------------------------------------------------------------- SyncBN (BiSeNet)

BISENET_CONFIG = os.path.join(ROOT, "configs", "Synthetic", "BiSeNetV1_R18.yaml")


def bisenet_model(state_path=None, sync_bn=False):
    """BiSeNetV1 R18 (BatchNorm) through ``Trainer.build_model``, so ``MODEL.SYNC_BN`` converts
    its BatchNorm when several workers run; weights from ``state_path`` if given."""
    cfg = setup_cfg(BISENET_CONFIG, ["MODEL.SYNC_BN", str(sync_bn)], device="cpu")
    model = Trainer.build_model(cfg)
    if state_path is not None:
        model.load_state_dict(torch.load(state_path, map_location="cpu"))
    return model.train()


def make_seg_input(index: int, size: int = 64):
    """A deterministic ``size x size`` semantic-segmentation input: random image and labels
    (19 train ids, a band of ignored 255 pixels)."""
    g = torch.Generator().manual_seed(index)
    image = torch.randint(0, 256, (3, size, size), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 19, (size, size), generator=g)
    labels[: size // 8] = 255
    return {"image": image, "sem_seg": labels, "height": size, "width": size}


def syncbn_grads_worker(state_path, out_dir):
    """Rank r: one float64 forward/backward of the SYNC_BN BiSeNet (DDP) on
    :func:`make_seg_input(r)`; saves the losses, gradients and the norm layer types."""
    rank = comm.get_rank()
    model = bisenet_model(state_path, sync_bn=True).double()
    norms = sorted({type(m).__name__ for m in model.modules() if "Norm" in type(m).__name__})
    with native_conv():
        losses, grads = loss_and_grads(_create_ddp_model(model), [make_seg_input(rank)])
    torch.save(
        {"losses": losses, "grads": grads, "norms": norms},
        os.path.join(out_dir, f"syncbn_rank{rank}.pt"),
    )


# ---------------------------------------------------------------- train_net with a crash


def load_train_net():
    """``tools/train_net.py`` as a module (its ``__main__`` block does not run)."""
    spec = importlib.util.spec_from_file_location(
        "solo_d2_tools_train_net", os.path.join(ROOT, "tools", "train_net.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _FailOnRank1(HookBase):
    def after_step(self):
        if comm.get_rank() == 1 and self.trainer.iter >= 1:
            raise RuntimeError(f"injected failure on rank 1 at iteration {self.trainer.iter}")


class _CrashingTrainer(Trainer):
    def build_hooks(self):
        return super().build_hooks() + [_FailOnRank1()]


def crashing_train_net_main(args):
    """``train_net.main`` whose rank 1 raises after its second iteration, while rank 0 goes
    on into the next DDP gradient all-reduce (where it would wait forever)."""
    train_net = load_train_net()
    train_net.Trainer = _CrashingTrainer
    return train_net.main(args)


def run_crashing_train_net(argv):
    """What ``tools/train_net.py argv`` does, with :func:`crashing_train_net_main` as main."""
    train_net = load_train_net()
    args = train_net.get_parser().parse_args(argv)
    launch(
        crashing_train_net_main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
        num_cpu_workers=args.num_cpu_workers,
    )


# ---------------------------------------------------------------- panoptic (SOLOPanoptic)
PANOPTIC_OPTS = [
    "MODEL.META_ARCHITECTURE",
    "SOLOPanoptic",
    "MODEL.SEM_SEG_HEAD.NAME",
    "SOLOv2StuffHead",
    "MODEL.SEM_SEG_HEAD.NUM_CLASSES",
    "3",
    "MODEL.SEM_SEG_HEAD.CONVS_DIM",
    "32",
    "DATASETS.TRAIN",
    "()",
    "DATASETS.TEST",
    "()",
]


def make_panoptic_input(index: int, size: int = IMAGE_SIZE):
    """:func:`make_input` plus ``sem_seg`` [H, W] long: 0 on the things, stuff 1 / 2 above and
    below the middle, and a void band whose height differs per image (different numbers of
    labelled pixels per worker)."""
    d = make_input(index, size)
    sem = torch.ones((size, size), dtype=torch.long)
    sem[size // 2 :] = 2
    if len(d["instances"]):
        sem[d["instances"].gt_masks.tensor.any(0)] = 0
    sem[: 8 + 20 * index] = 255
    d["sem_seg"] = sem
    return d


def panoptic_grads_worker(state_path, out_dir, split):
    """Rank r: one forward/backward of the tiny SOLOPanoptic on image ``split[r]`` through the
    trainer's DDP wrapper; saves losses and averaged gradients to ``panoptic_rank{r}.pt``."""
    rank = comm.get_rank()
    model = build_model(tiny_cfg(*PANOPTIC_OPTS))
    model.load_state_dict(torch.load(state_path, map_location="cpu"))
    model = _create_ddp_model(model.train())
    with native_conv():
        result = loss_and_grads(model, [make_panoptic_input(split[rank])])
    torch.save(result, os.path.join(out_dir, f"panoptic_rank{rank}.pt"))


# a collective that waits longer than this raises in the worker (and so fails the launch)
COLLECTIVE_TIMEOUT = timedelta(seconds=120)


def launch_cpu_workers(worker, *args):
    launch(worker, 0, num_cpu_workers=2, dist_url="auto", args=args, timeout=COLLECTIVE_TIMEOUT)
