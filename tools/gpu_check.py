#!/usr/bin/env python
"""The prepared GPU check of issues 29 and 33 (``make gpu-check``): one script, one GPU, at most
8 minutes, every figure written to ``--out`` (``$OUT`` on the device machine).

Parts, each with a time budget (a part that runs over skips what is left of it, with a note),
each in its own ``try`` (a failure is a row and a traceback in ``errors.txt``; the other parts
still run):

1. ``tests``: ``pytest tests/test_cuda.py`` (in a subprocess, killed at its budget).
2. ``inference``: SOLOv2 R50 at 800x1216 (random weights, eval): backbone+FPN, heads,
   post-processing (``model.inference``) of synthetic head outputs with ~300 and ~1500
   candidates (100 kept), and the whole ``DefaultPredictor`` call (uint8 HWC image in, masks
   copied to the host out); fp32 with TF32 off and AMP; against the AdelaiDet port on the same
   weights where it loads (``benchmarks.adelaidet_port``, ``ADELAIDET_ROOT``).
3. ``training``: step time (median after warm-up) and peak memory of every recipe config
   (``configs/*/*.yaml`` but the bases, ``Synthetic/`` and ``Converted/``) at the recipe's batch
   per GPU (``SOLVER.IMS_PER_BATCH / 8``) and input size, fp32 and AMP, through
   :func:`benchmarks.cuda.train_steps` (detectron2's SimpleTrainer / AMPTrainer with
   the recipe's optimizer); the port's SOLOv2 R50 step on the same batch.
4. ``bisenet``: BiSeNet V1 R18 / V2 inference at 512x1024 and 1024x2048 in fp32, AMP and AMP +
   channels_last; BiSeNetV2 under AMP with cuDNN disabled (is cuDNN's fp16 grouped/depthwise
   conv why AMP is slower than fp32?) and with ``cudnn.benchmark``.
5. ``profile``: ``torch.profiler`` tables (CPU + CUDA, top 30 by CUDA time) of the SOLOv2
   post-processing at ~300 candidates, a SOLOv2 R50 training step and BiSeNetV2 (fp32, AMP).

Output (at most 8 files, as a device call brings back): ``rows.md`` (the rows in the format of
``docs/BENCHMARKS.md``: ``| what | solo_d2 | baseline | ratio |`` sections under a header
naming date, commit, GPU and torch version), ``results.json`` (raw numbers), ``log.txt`` (this
script's output), ``pytest.txt``, ``profiles.txt`` and ``errors.txt`` (tracebacks).

detectron2 comes from ``build/gpu_bundle`` (``tools/gpu_bundle.py``) where the running Python
has none, or always with ``--bundle``::

    PYTHONPATH=build/gpu_bundle:. python3 tools/gpu_check.py --out "$OUT"     # on the GPU
    python tools/gpu_check.py --dry-run                                     # CPU, tiny sizes

``--dry-run`` runs the same code on the CPU with tiny sizes, one repeat and one training step
(AMP training is skipped there: AMPTrainer needs CUDA), so that a GPU's few minutes are not
lost to a crash (``tests/tools/test_gpu_check.py``).
"""

import argparse
import contextlib
import datetime
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BUNDLE = ROOT / "build" / "gpu_bundle"
PARTS = ("tests", "inference", "training", "bisenet", "profile")
# seconds per part on the GPU; a part may also use what earlier parts left (cumulative schedule)
BUDGETS = {"tests": 150, "inference": 55, "training": 190, "bisenet": 40, "profile": 45}
DRY_BUDGETS = {"tests": 60, "inference": 30, "training": 60, "bisenet": 20, "profile": 30}
SECTION = {p: f"gpu_check_{p}" for p in PARTS}
SOLOV2_R50 = "SOLOv2/R50_3x.yaml"
DRY_TRAIN_CONFIGS = (
    "SOLOv2/R50_3x.yaml",
    "SOLO/R50_1x.yaml",
    "DecoupledSOLO/Light_R50_3x.yaml",
    "SOLOv2/Light512_DCN_R50_3x.yaml",
    "Panoptic/SOLOv2_R50_3x_coco.yaml",
    "Cityscapes/SOLOv2_R50.yaml",
    "BiSeNet/V1_R18_cityscapes.yaml",
    "BiSeNet/V2_cityscapes.yaml",
)


# ----------------------------------------------------------------------------- set-up
def use_bundle(bundle, force=False):
    """Make detectron2 (and the other bundled packages) importable from ``bundle`` when the
    running Python has no detectron2, when it already comes from ``bundle`` (``PYTHONPATH``),
    or when ``force``; put the repository on the path. The same path goes to child processes
    (``PYTHONPATH``). Returns a description of what was done."""
    bundle = Path(bundle).resolve()
    spec = importlib.util.find_spec("detectron2")
    if (
        spec is not None and spec.origin and not force
    ):  # already on PYTHONPATH from a bundle: that one
        home = Path(spec.origin).resolve().parents[1]
        if (home / "MANIFEST.json").is_file():
            bundle = home
    from_bundle = (
        spec is not None and spec.origin and Path(spec.origin).resolve().is_relative_to(bundle)
    )
    front, back = [], []
    note = f"detectron2 from the running Python ({spec.origin if spec else 'none'})"
    if bundle.is_dir() and (force or spec is None or from_bundle):
        front.append(str(bundle))
        binary = bundle / f"bin-cp{sys.version_info[0]}{sys.version_info[1]}"
        if binary.is_dir():
            front.append(str(binary))
        if importlib.util.find_spec("pytest") is None and (bundle / "fallback").is_dir():
            back.append(str(bundle / "fallback"))
        note = f"detectron2 from the bundle {bundle}" + (
            ""
            if binary.is_dir()
            else f" (no {binary.name}: compiled packages from the running Python)"
        )
        adet = bundle / "AdelaiDet"
        if adet.is_dir():
            os.environ.setdefault("ADELAIDET_ROOT", str(adet))
    elif spec is None:
        note = (
            f"no detectron2 and no bundle at {bundle}: run "
            "tools/gpu_bundle.py (make gpu-bundle) first"
        )
    front.append(str(ROOT))
    for p in reversed(front):
        if p in sys.path:
            sys.path.remove(p)
        sys.path.insert(0, p)
    for p in back:
        if p not in sys.path:
            sys.path.append(p)
    old = [
        p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p not in front + back
    ]
    os.environ["PYTHONPATH"] = os.pathsep.join(front + old + back)
    os.environ.setdefault("DETECTRON2_DATASETS", str(ROOT / "datasets"))
    importlib.invalidate_caches()
    return note


class Tee:
    """``sys.stdout`` that also writes to a file (flushed per write)."""

    def __init__(self, stream, path):
        self.stream, self.file = stream, open(path, "a", buffering=1)

    def write(self, s):
        self.stream.write(s)
        self.file.write(s)
        return len(s)

    def flush(self):
        self.stream.flush()
        self.file.flush()


# ----------------------------------------------------------------------------- settings
class Settings:
    """Sizes, repeats and budgets of a GPU run or of the CPU dry run."""

    def __init__(self, dry, device, budget_scale=1.0):
        self.dry, self.device = dry, device
        self.cuda = device == "cuda"
        self.budgets = {k: v * budget_scale for k, v in (DRY_BUDGETS if dry else BUDGETS).items()}
        self.size = (128, 160) if dry else (800, 1216)
        self.candidates = (60, 200) if dry else (300, 1500)
        self.num_objects = 20 if dry else 60
        # dry run: every model R18-like and narrow
        # (any config takes these keys; unused ones are ignored)
        self.model_opts = (
            [
                "MODEL.RESNETS.DEPTH",
                "18",
                "MODEL.RESNETS.RES2_OUT_CHANNELS",
                "64",
                "MODEL.FPN.OUT_CHANNELS",
                "64",
                "MODEL.SOLO.INS_CHANNELS",
                "64",
                "MODEL.SOLO.NUM_CONVS",
                "1",
                "MODEL.SOLO.MASK_MID_CHANNELS",
                "32",
                "MODEL.SEM_SEG_HEAD.CONVS_DIM",
                "32",
            ]
            if dry
            else []
        )
        self.repeats, self.warmup = (1, 0) if dry else (10, 3)
        self.train_steps, self.train_warmup = (1, 0) if dry else (4, 2)
        self.train_instances = 3 if dry else 8
        self.bisenet_sizes = ((64, 128),) if dry else ((512, 1024), (1024, 2048))
        self.profile_steps = 1 if dry else 5
        self.amp_dtype = None  # set once torch is imported

    def train_size(self, cfg):
        """The recipe's training input: the crop (BiSeNet), else the largest short side with the
        datasets' aspect (COCO 800x1216 as the benchmarks, Cityscapes 1:2), within the max size."""
        if self.dry:
            return 64, 96
        if cfg.INPUT.CROP.ENABLED and cfg.INPUT.CROP.TYPE == "absolute":
            return tuple(int(x) for x in cfg.INPUT.CROP.SIZE)
        h = max(cfg.INPUT.MIN_SIZE_TRAIN)
        aspect = 2.0 if "cityscapes" in cfg.DATASETS.TRAIN[0] else 1.52
        return h, min(int(cfg.INPUT.MAX_SIZE_TRAIN), int(round(h * aspect / 32)) * 32)

    @staticmethod
    def batch_per_gpu(cfg):
        """The recipe's images per GPU: its ``SOLVER.IMS_PER_BATCH`` over 8 GPUs (at least 1)."""
        return max(1, int(cfg.SOLVER.IMS_PER_BATCH) // 8)


class Report:
    """Rows, raw results, notes and tracebacks of a run, written to ``out`` as they come."""

    def __init__(self, out, header, short):
        self.out, self.header, self.short = Path(out), header, short
        self.sections = {}
        self.results = {"header": header, "parts": {}}
        self.notes = []

    def row(self, part, what, ours="", base="", ratio=""):
        cells = [str(c).replace("|", "/").replace("\n", " ") for c in (what, ours, base, ratio)]
        self.sections.setdefault(SECTION[part], []).append(cells)
        print("  | " + " | ".join(cells) + " |", flush=True)

    def put(self, part, key, value):
        self.results["parts"].setdefault(part, {})[key] = value

    def error(self, where, exc=None):
        text = traceback.format_exc() if exc is not None else str(where)
        with open(self.out / "errors.txt", "a") as f:
            f.write(f"==== {where}\n{text}\n")
        return (
            f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
            if exc is not None
            else ""
        )

    def note(self, text):
        self.notes.append(text)
        print(f"  note: {text}", flush=True)

    def write(self):
        lines = [
            "# GPU check\n\nGenerated by `python3 tools/gpu_check.py` "
            f"(`make gpu-check`).\n\n{self.header}\n"
        ]
        if self.notes:
            lines.append("\n" + "".join(f"- {n}\n" for n in self.notes))
        for part in PARTS:
            name = SECTION[part]
            if name not in self.sections:
                continue
            lines.append(
                f"\n## {name}\n\n{self.short}\n\n| what | solo_d2 | baseline | "
                "ratio |\n|---|---|---|---|\n"
            )
            lines.extend("| " + " | ".join(r) + " |\n" for r in self.sections[name])
        (self.out / "rows.md").write_text("".join(lines))
        self.results["notes"] = self.notes
        (self.out / "results.json").write_text(
            json.dumps(self.results, indent=1, default=str) + "\n"
        )


class Part:
    """The running part: its deadline and the checks of its loops."""

    def __init__(self, name, deadline):
        self.name, self.deadline = name, deadline
        self.skipped = []

    def left(self):
        return self.deadline - time.perf_counter()

    def over(self, what):
        """True (and ``what`` recorded as skipped) when the part's time is spent."""
        if self.left() <= 0:
            self.skipped.append(what)
            return True
        return False


# ----------------------------------------------------------------------------- helpers
def _torch():
    import torch

    return torch


def sync(s):
    if s.cuda:
        _torch().cuda.synchronize()


def timed(s, fn, repeats=None, warmup=None):
    """Median seconds of ``repeats`` calls of ``fn`` after ``warmup`` calls, each followed by a
    device synchronize."""
    repeats = s.repeats if repeats is None else repeats
    warmup = s.warmup if warmup is None else warmup
    for _ in range(warmup):
        fn()
    sync(s)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync(s)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def ms(t):
    return "n/a" if t is None else (f"{t * 1e3:.2f} ms" if t < 0.1 else f"{t * 1e3:.0f} ms")


def ratio(base, ours):
    """``base / ours`` (above 1: solo_d2, or the row's variant, is faster)."""
    if not base or not ours:
        return ""
    return f"{base / ours:.2f}x"


@contextlib.contextmanager
def precision(s, mode):
    """``fp32``: float32 with TF32 off (cuDNN and matmul); ``fp32-default``: PyTorch's defaults;
    ``amp``: autocast (fp16 on CUDA, bf16 on the CPU)."""
    torch = _torch()
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    if mode == "fp32":
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        if mode == "amp":
            with torch.autocast(s.device, dtype=s.amp_dtype):
                yield
        else:
            yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def reset_peak(s):
    if s.cuda:
        torch = _torch()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def peak(s):
    return _torch().cuda.max_memory_allocated() if s.cuda else None


def gib(b):
    return "n/a (CPU)" if b is None else f"{b / 2**30:.2f} GiB"


def free(s):
    import gc

    gc.collect()
    if s.cuda:
        _torch().cuda.empty_cache()


@contextlib.contextmanager
def cpu_stands_in_for_cuda(s):
    """Dry run only: :func:`benchmarks.cuda.train_steps` (written for CUDA) runs on the
    CPU, its ``torch.cuda`` calls being no-ops (peak memory 0)."""
    if s.cuda:
        yield
        return
    torch = _torch()
    from benchmarks import cuda as cuda_bench

    names = ("synchronize", "reset_peak_memory_stats", "max_memory_allocated", "empty_cache")
    old = {n: getattr(torch.cuda, n) for n in names}
    old_device = cuda_bench.DEVICE
    torch.cuda.synchronize = lambda *a, **k: None
    torch.cuda.reset_peak_memory_stats = lambda *a, **k: None
    torch.cuda.max_memory_allocated = lambda *a, **k: 0
    torch.cuda.empty_cache = lambda *a, **k: None
    cuda_bench.DEVICE = "cpu"
    try:
        yield
    finally:
        for n, f in old.items():
            setattr(torch.cuda, n, f)
        cuda_bench.DEVICE = old_device


def build(s, config, opts=()):
    """``(cfg, model)`` of ``config`` (a path under ``configs/``)
    with random weights on the device."""
    from detectron2.modeling import build_model

    from solo_d2.model_zoo import get_config_file

    _torch().manual_seed(0)
    cfg = recipe_cfg(s, get_config_file(config), opts)
    return cfg, build_model(cfg)


def _config_path(config):
    from solo_d2.model_zoo import get_config_file

    return get_config_file(config)


def recipe_cfg(s, path, opts=()):
    """The config at ``path`` for random weights on the device (the dry run's small opts first)."""
    from solo_d2.checkpoint.core import build_cfg

    return build_cfg(path, list(s.model_opts) + list(opts), device=s.device)


def head_outputs(model, images, feats):
    """SOLO's heads (instance head and mask branch) on the backbone's features."""
    return model._head_outputs(images, feats)


def predictor(cfg, model):
    """detectron2's ``DefaultPredictor`` around ``model`` (no second model, no checkpoint load):
    BGR uint8 HWC image in, ``ResizeShortestEdge`` to the test size, ``{"instances"}`` out."""
    import detectron2.data.transforms as T
    from detectron2.engine import DefaultPredictor

    p = DefaultPredictor.__new__(DefaultPredictor)
    p.cfg = cfg.clone()
    p.model = model.eval()
    p.aug = T.ResizeShortestEdge(
        [cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST
    )
    p.input_format = cfg.INPUT.FORMAT
    return p


def training_batch(s, cfg, size, batch):
    """:func:`benchmarks.baselines.training_batch` of ``cfg``; for ``SOLOPanoptic`` its
    instances plus a random ``sem_seg`` (0 things, 1..S stuff)."""
    from benchmarks import baselines as bl

    torch = _torch()
    if cfg.MODEL.META_ARCHITECTURE != "SOLOPanoptic":
        return bl.training_batch(cfg, *size, num_instances=s.train_instances, batch=batch)
    solo = cfg.clone()
    solo.defrost()
    solo.MODEL.META_ARCHITECTURE = "SOLO"
    out = bl.training_batch(solo, *size, num_instances=s.train_instances, batch=batch)
    g = torch.Generator().manual_seed(4)
    for x in out:
        sem = torch.randint(1, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, size, generator=g)
        sem[x["instances"].gt_masks.tensor.any(0)] = 0
        x["sem_seg"] = sem
    return out


def synthetic_outputs(s, n):
    from benchmarks import baselines as bl

    cate, mask_out, padded = bl.synthetic_solov2_outputs(n, size=s.size, num_objects=s.num_objects)
    return (
        [c.to(s.device) for c in cate],
        [(k.to(s.device), f.to(s.device)) for k, f in mask_out],
        padded,
    )


# ----------------------------------------------------------------------------- the port
class Port:
    """The AdelaiDet port: its own ``adet/modeling/solov2`` code, loaded from ``ADELAIDET_ROOT`` by
    :mod:`benchmarks.adelaidet_port` (``bool(port)`` False and ``reason`` set where it is
    unavailable: its rows are then skipped with that reason)."""

    # dry run: narrow heads (the converter needs R50's 6 res4 blocks), the same on both sides
    DRY_PORT_OPTS = [
        "MODEL.FPN.OUT_CHANNELS",
        "64",
        "MODEL.SOLOV2.INSTANCE_IN_CHANNELS",
        "64",
        "MODEL.SOLOV2.INSTANCE_CHANNELS",
        "64",
        "MODEL.SOLOV2.NUM_INSTANCE_CONVS",
        "1",
        "MODEL.SOLOV2.MASK_IN_CHANNELS",
        "64",
        "MODEL.SOLOV2.MASK_CHANNELS",
        "32",
    ]
    DRY_TWIN_OPTS = [
        "MODEL.FPN.OUT_CHANNELS",
        "64",
        "MODEL.SOLO.INS_CHANNELS",
        "64",
        "MODEL.SOLO.NUM_CONVS",
        "1",
        "MODEL.SOLO.MASK_MID_CHANNELS",
        "32",
    ]

    def __init__(self):
        self.api = self.mod = self.root = None
        self.reason = None
        root = os.environ.get("ADELAIDET_ROOT")
        if not root:
            self.reason = "ADELAIDET_ROOT is not set and the bundle has no AdelaiDet/"
            return
        try:
            from benchmarks import adelaidet_port
        except Exception as e:  # noqa: BLE001 - a missing or broken loader skips the port's rows
            self.reason = f"benchmarks.adelaidet_port unavailable ({type(e).__name__}: {e})"
            return
        try:
            self.mod = adelaidet_port.load_adelaidet_solov2(root)
        except Exception as e:  # noqa: BLE001
            self.reason = f"the port did not load from {root} ({type(e).__name__}: {str(e)[:200]})"
            return
        self.api, self.root = adelaidet_port, root

    def __bool__(self):
        return self.mod is not None

    def port_opts(self, s):
        return (self.DRY_PORT_OPTS if s.dry else []) + ["MODEL.DEVICE", s.device]

    def models(self, s):
        """``(solo_d2's SOLOv2 R50, the port's SOLOv2 R50)`` with the same weights (the port's
        initialization, converted by solo_d2's ``adelaidet-solov2`` converter), eval,
        on the device."""
        port_model = self.api.build_port_model(self.mod, "R50_3x.yaml", opts=self.port_opts(s))
        ours = self.api.solo_d2_twin(port_model, opts=self.DRY_TWIN_OPTS if s.dry else [])
        return ours.to(s.device).eval(), port_model.eval()

    def postprocess(self, port_model, cate_logits, mask_outputs, padded, output_size=None):
        """The port's post-processing (its ``forward`` after the heads: sigmoid, ``point_nms``,
        ``inference``) of one image's head outputs,
        as :func:`baselines.solo_d2_postprocess` takes them."""
        point_nms = self.mod.utils.point_nms
        cates = [point_nms(c.sigmoid(), kernel=2).permute(0, 2, 3, 1) for c in cate_logits]
        kernels = [k for k, _ in mask_outputs]
        h, w = output_size or padded
        return port_model.inference(
            cates, kernels, mask_outputs[0][1], [tuple(padded)], [{"height": h, "width": w}]
        )[0]["instances"]

    @staticmethod
    def heads(port_model, feats):
        """The port's instance head (on its ``split_feats`` levels) and mask head."""
        ins = port_model.ins_head(
            port_model.split_feats([feats[f] for f in port_model.instance_in_features])
        )
        return ins, port_model.mask_head([feats[f] for f in port_model.mask_in_features])

    def train_step_fn(self, s, batch, amp):
        """A closure running one training step of the port's SOLOv2 R50 on ``batch`` (detectron2's
        SimpleTrainer / AMPTrainer, detectron2's default optimizer of the port's config: SGD as
        its recipe)."""
        import itertools

        from detectron2.engine import AMPTrainer, SimpleTrainer
        from detectron2.solver import build_optimizer
        from detectron2.utils.events import EventStorage

        cfg = self.api.port_cfg(self.mod, "R50_3x.yaml", self.port_opts(s))
        model = self.api.build_port_model(self.mod, "R50_3x.yaml", opts=self.port_opts(s)).train()
        trainer = (AMPTrainer if amp else SimpleTrainer)(
            model, itertools.repeat(batch), build_optimizer(cfg, model)
        )
        storage = EventStorage(0)

        def step():
            with storage:  # the trainer's metrics go to it during the step only
                trainer.run_step()
                storage.step()

        step.losses = lambda: [v for v, _ in storage.history("total_loss").values()]
        return step


# ----------------------------------------------------------------------------- parts
def part_tests(s, rep, part):
    """``pytest tests/test_cuda.py`` in a subprocess killed at the part's deadline."""
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-rfEs",
        "--durations=10",
        "-p",
        "no:cacheprovider",
        "tests/test_cuda.py",
    ]
    if s.cuda and importlib.util.find_spec("xdist") is not None:
        cmd[3:3] = [
            "-n",
            "4",
        ]  # the GPU machine has 16 cores; the train_net subprocess tests dominate
    t = time.perf_counter()
    timeout = max(5.0, part.left())
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        out, rc = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        out += f"\n[gpu_check] killed after {timeout:.0f} s (the part's budget)\n"
        rc = "timeout"
    (rep.out / "pytest.txt").write_text(out)
    summary = next(
        (
            line.strip("= ")
            for line in reversed(out.splitlines())
            if line.startswith("=") or " in " in line
        ),
        out.strip().splitlines()[-1] if out.strip() else "no output",
    )
    print("\n".join("    " + line for line in out.strip().splitlines()[-15:]), flush=True)
    rep.put(
        "tests",
        "pytest",
        {"returncode": rc, "summary": summary, "seconds": time.perf_counter() - t},
    )
    rep.row(
        "tests",
        "pytest tests/test_cuda.py" + ("" if s.cuda else " (no CUDA: its tests skip)"),
        summary,
        f"exit {rc}",
        f"{time.perf_counter() - t:.0f} s",
    )


def part_inference(s, rep, part, port):
    torch = _torch()
    from benchmarks import baselines as bl

    h, w = s.size
    model = port_model = cfg = None
    if port:
        try:
            model, port_model = port.models(s)  # the same weights on both sides
            name = "R50, narrow heads (dry run)" if s.dry else "R50"
        except Exception as e:  # noqa: BLE001
            rep.note(
                "the AdelaiDet port's model did not build "
                f"({rep.error('port model', e)}): port columns empty"
            )
    else:
        rep.note(f"AdelaiDet port rows skipped: {port.reason}")
    if model is None:
        cfg, model = build(s, SOLOV2_R50)
        name = "R18, narrow heads (dry run)" if s.dry else "R50"
    cfg = cfg or recipe_cfg(s, _config_path(SOLOV2_R50))  # the predictor's input settings
    model.eval()
    if s.dry:
        cfg.INPUT.MIN_SIZE_TEST = h  # the predictor keeps the tiny image's size
    g = torch.Generator().manual_seed(0)
    img = torch.randint(0, 255, (3, h, w), dtype=torch.uint8, generator=g)
    with torch.no_grad():
        images = model.preprocess_image([{"image": img}])
        x = images.tensor
        for mode in ("fp32", "amp"):
            if part.over(f"backbone/heads {mode}"):
                break
            with precision(s, mode):
                t_bb = timed(s, lambda: model.backbone(x))
                feats = model.backbone(x)
                t_heads = timed(s, lambda: head_outputs(model, images, feats))
                t_port = t_port_heads = None
                if port_model is not None and mode == "fp32":
                    t_port = timed(s, lambda: port_model.backbone(x))
                    port_feats = port_model.backbone(x)
                    t_port_heads = timed(s, lambda: port.heads(port_model, port_feats))
            rep.put("inference", f"backbone_{mode}_s", {"solo_d2": t_bb, "port": t_port})
            rep.put("inference", f"heads_{mode}_s", {"solo_d2": t_heads, "port": t_port_heads})
            label = "fp32, TF32 off" if mode == "fp32" else "AMP"
            rep.row(
                "inference",
                f"SOLOv2 {name} backbone+FPN, {h}x{w}, {label}",
                ms(t_bb),
                f"{ms(t_port)} (AdelaiDet port)" if t_port else "",
                ratio(t_port, t_bb),
            )
            rep.row(
                "inference",
                f"SOLOv2 {name} heads (instance head + mask branch), {h}x{w}, {label}",
                ms(t_heads),
                f"{ms(t_port_heads)} (AdelaiDet port)" if t_port_heads else "",
                ratio(t_port_heads, t_heads),
            )
        # post-processing of synthetic head outputs shaped like SOLOv2 R50's
        t_bb = rep.results["parts"].get("inference", {}).get("backbone_fp32_s", {}).get("solo_d2")
        for n in s.candidates:
            if part.over(f"post-processing {n}"):
                break
            cate, mask_out, padded = synthetic_outputs(s, n)
            with precision(s, "fp32"):
                out = bl.solo_d2_postprocess(model, cate, mask_out, padded)
                t_ours = timed(s, lambda: bl.solo_d2_postprocess(model, cate, mask_out, padded))
                t_ref = same = None
                if port_model is not None:
                    ref = port.postprocess(port_model, cate, mask_out, padded)
                    same = _same_detections(out, ref)
                    t_ref = timed(s, lambda: port.postprocess(port_model, cate, mask_out, padded))
            counts = _counts(lambda: bl.solo_d2_postprocess(model, cate, mask_out, padded))
            port_counts = (
                _counts(lambda: port.postprocess(port_model, cate, mask_out, padded))
                if port_model
                else None
            )
            rep.put(
                "inference",
                f"post_{n}",
                {
                    "solo_d2_s": t_ours,
                    "port_s": t_ref,
                    "kept": len(out),
                    "same_as_port": same,
                    "ops_syncs": counts,
                    "port_ops_syncs": port_counts,
                },
            )
            rep.row(
                "inference",
                f"post-processing, ~{n} candidates, {len(out)} kept, fp32 TF32 off"
                + (f" ({same} vs the port)" if same else "")
                + (f"; {counts[0]} kernel ops, {counts[1]} syncs (OpCounter)" if counts else "")
                + (f", port {port_counts[0]} ops, {port_counts[1]} syncs" if port_counts else ""),
                ms(t_ours),
                f"{ms(t_ref)} (AdelaiDet port)" if t_ref else "",
                "; ".join(
                    x
                    for x in (
                        ratio(t_ref, t_ours),
                        f"{t_ours / t_bb:.0%} of backbone+FPN" if t_bb else "",
                    )
                    if x
                ),
            )
        # the whole predictor call: uint8 HWC image in, masks on the host out
        import numpy as np

        image = np.random.RandomState(0).randint(0, 255, (h, w, 3), dtype=np.uint8)
        pred = predictor(cfg, model)
        port_pred = predictor(cfg, port_model) if port_model is not None else None

        def call(p):
            inst = p(image)["instances"]
            return inst.pred_masks.cpu()

        # random weights give no candidates above the recipe's 0.1: the second setting lowers the
        # score threshold (both models) to the score of the ~300th (cell, class) and the update
        # threshold to 0, so that Matrix NMS and the paste of ~100 masks run as on a real image
        settings = [("recipe thresholds", None)]
        try:
            settings.append(
                (
                    f"score threshold lowered to pass ~{s.candidates[0]} candidates",
                    _kth_score(model, image, s.candidates[0]),
                )
            )
        except Exception as e:  # noqa: BLE001
            rep.note(f"no lowered-threshold predictor rows ({rep.error('kth score', e)})")
        for label, thr in settings:
            for mode in ("fp32", "amp"):
                if part.over(f"predictor {label} {mode}"):
                    break
                try:
                    with _thresholds(model, port_model, thr), precision(s, mode):
                        kept = len(call(pred))
                        kept_port = (
                            len(call(port_pred))
                            if port_pred is not None and mode == "fp32"
                            else None
                        )
                        reset_peak(s)
                        t_ours = timed(s, lambda: call(pred))
                        mem = peak(s)
                        t_ref = timed(s, lambda: call(port_pred)) if kept_port is not None else None
                except Exception as e:  # noqa: BLE001
                    rep.row(
                        "inference",
                        f"whole DefaultPredictor call ({mode}, {label})",
                        "failed",
                        rep.error(f"predictor {mode} {label}", e),
                    )
                    continue
                key = f"predictor_{mode}" + ("" if thr is None else "_lowered")
                rep.put(
                    "inference",
                    key,
                    {
                        "solo_d2_s": t_ours,
                        "port_s": t_ref,
                        "kept": kept,
                        "port_kept": kept_port,
                        "peak_bytes": mem,
                        "score_thresh": thr,
                    },
                )
                rep.row(
                    "inference",
                    f"whole DefaultPredictor call, uint8 {h}x{w}x3 in, masks on the host out "
                    f"({'fp32, TF32 off' if mode == 'fp32' else 'AMP'}; random weights, "
                    f"{label}: {kept} detections"
                    + (f", port {kept_port}" if kept_port is not None else "")
                    + f"; peak {gib(mem)})",
                    ms(t_ours),
                    f"{ms(t_ref)} (AdelaiDet port)" if t_ref else "",
                    ratio(t_ref, t_ours),
                )
    model = port_model = pred = port_pred = None  # noqa: F841 - released before free()
    free(s)


def _kth_score(model, image, k):
    """The ``k``-th largest category score after point NMS of ``model`` on the HWC ``image``."""
    torch = _torch()
    import torch.nn.functional as F

    with torch.no_grad():
        x = torch.as_tensor(image.astype("float32").transpose(2, 0, 1))
        cate_logits, _ = head_outputs(model, model.preprocess_image([{"image": x}]), None)
        scores = []
        for c in cate_logits:
            p = c.float().sigmoid()
            keep = F.max_pool2d(p, 2, stride=1, padding=1)[:, :, :-1, :-1] == p
            scores.append((p * keep).flatten())
        scores = torch.cat(scores)
        return float(scores.topk(min(k, scores.numel())).values[-1]) * (1 - 1e-6)


@contextlib.contextmanager
def _thresholds(model, port_model, score):
    """``score`` as the score threshold and 0 as the update threshold of solo_d2's model (its
    ``score_thresh``/``update_thresh``) and of the port's (``score_threshold``/``update_threshold``)
    inside the block; nothing when ``score`` is None."""
    if score is None:
        yield
        return
    pairs = [(model, "score_thresh", score), (model, "update_thresh", 0.0)]
    if port_model is not None:
        pairs += [(port_model, "score_threshold", score), (port_model, "update_threshold", 0.0)]
    missing = [name for obj, name, _ in pairs if not hasattr(obj, name)]
    if missing:
        raise AttributeError(f"no {', '.join(missing)} attribute to lower")
    old = [getattr(obj, name) for obj, name, _ in pairs]
    for obj, name, value in pairs:
        setattr(obj, name, value)
    try:
        yield
    finally:
        for (obj, name, _), value in zip(pairs, old):
            setattr(obj, name, value)


def _same_detections(ours, ref):
    """A short comparison of two ``Instances`` (count, masks, scores)."""
    try:
        if len(ours) != len(ref):
            return f"{len(ours)} vs {len(ref)} kept"
        if not len(ours):
            return "both empty"
        masks = ours.pred_masks.shape == ref.pred_masks.shape and bool(
            (ours.pred_masks == ref.pred_masks).all()
        )
        diff = (ours.scores.float() - ref.scores.float()).abs().max().item()
        return f"masks {'same' if masks else 'DIFFERENT'}, scores within {diff:.1e}"
    except Exception as e:  # noqa: BLE001
        return f"not compared ({type(e).__name__})"


def _counts(fn):
    """``(kernel ops, syncs)`` of ``fn`` by :class:`benchmarks.counting.OpCounter`, or None."""
    try:
        from benchmarks.counting import OpCounter
    except Exception:  # noqa: BLE001 - optional
        return None
    try:
        with OpCounter() as c:
            fn()
        return c.kernel_ops, c.syncs
    except Exception:  # noqa: BLE001
        return None


def recipe_configs():
    from benchmarks import runner

    return runner.recipe_configs(), runner.configs_dir()


def part_training(s, rep, part, port, only=None):
    from benchmarks.cuda import train_steps

    configs, root = recipe_configs()
    names = [os.path.relpath(c, root) for c in configs]
    if only:
        names = [n for n in names if any(n.startswith(o) or n == o for o in only)]
    run = names
    if s.dry:  # one per family; the plan of the others is still checked
        run = [n for n in names if n in DRY_TRAIN_CONFIGS]
        for n in names:
            if n not in run:
                cfg = recipe_cfg(s, os.path.join(root, n))
                rep.row(
                    "training",
                    f"train step {n}: planned batch {s.batch_per_gpu(cfg)} per GPU, "
                    f"{'x'.join(map(str, Settings(False, 'cuda').train_size(cfg)))}",
                    "not run in the dry run",
                )
    run = sorted(
        run, key=lambda n: n != SOLOV2_R50
    )  # SOLOv2 R50 first, the port's step right after it
    for n in run:
        if n != SOLOV2_R50 and SOLOV2_R50 in run:
            _port_row(s, rep, port, part)
        if part.over(f"train {n}"):
            continue
        cfg = recipe_cfg(s, os.path.join(root, n))
        bpg = s.batch_per_gpu(cfg)
        size = s.train_size(cfg)
        batch = training_batch(s, cfg, size, bpg)
        res = {"batch": bpg, "size": size}
        for amp in (False, True):
            key = "amp" if amp else "fp32"
            if amp and not s.cuda:
                res[key] = "skipped: AMPTrainer needs CUDA"
                continue
            if part.over(f"train {n} {key}"):
                res[key] = "skipped: over the part's budget"
                continue
            try:
                with cpu_stands_in_for_cuda(s):
                    t, mem, losses = train_steps(cfg, batch, amp, s.train_steps, s.train_warmup)
                res[key] = {"step_s": t, "peak_bytes": mem if s.cuda else None, "losses": losses}
            except Exception as e:  # noqa: BLE001 - a failing config is a row, not the end of the part
                res[key] = f"failed: {rep.error(f'train {n} {key}', e)}"
                free(s)
        rep.put("training", n, res)

        def cell(r):
            if isinstance(r, str):
                return r
            finite = all(v == v and abs(v) != float("inf") for v in r["losses"])
            return f"{ms(r['step_s'])}/step, peak {gib(r['peak_bytes'])}" + (
                "" if finite else ", NON-FINITE loss"
            )

        f32, f16 = res.get("fp32"), res.get("amp")
        both = isinstance(f32, dict) and isinstance(f16, dict)
        rep.row(
            "training",
            f"train step {n}, batch {bpg} per GPU, {size[0]}x{size[1]}, "
            f"{s.train_instances} instances",
            f"AMP {cell(f16)}" if f16 is not None else "",
            f"fp32 {cell(f32)}",
            (
                f"AMP {f32['step_s'] / f16['step_s']:.2f}x faster"
                + (
                    f", {f32['peak_bytes'] / f16['peak_bytes']:.2f}x less memory"
                    if f16["peak_bytes"]
                    else ""
                )
            )
            if both
            else "",
        )
    if run == [SOLOV2_R50]:
        _port_row(s, rep, port, part)
    free(s)


def _port_row(s, rep, port, part):
    """The port's SOLOv2 R50 step on the same batch as solo_d2's SOLOv2/R50_3x.yaml (once)."""
    if rep.results["parts"].get("training", {}).get("_port_done"):
        return
    rep.put("training", "_port_done", True)
    if not port:
        rep.row("training", "AdelaiDet port SOLOv2 R50 train step", "", f"skipped: {port.reason}")
    elif not part.over("port train step"):
        _port_training(s, rep, port, part)


def _port_training(s, rep, port, part):
    """The port's SOLOv2 R50 step on the batch of solo_d2's SOLOv2/R50_3x.yaml row (same size,
    batch, instances), fp32 and AMP, beside solo_d2's figures of that row."""
    from solo_d2.model_zoo import get_config_file

    cfg = recipe_cfg(s, get_config_file(SOLOV2_R50))
    bpg, size = s.batch_per_gpu(cfg), s.train_size(cfg)
    batch = training_batch(s, cfg, size, bpg)
    ours = rep.results["parts"].get("training", {}).get(SOLOV2_R50, {})
    for amp in (False, True):
        key = "amp" if amp else "fp32"
        if amp and not s.cuda:
            rep.row(
                "training",
                f"AdelaiDet port SOLOv2 R50 train step, {key}",
                "",
                "skipped: AMPTrainer needs CUDA",
            )
            continue
        if part.over(f"port train step {key}"):
            continue
        try:
            step = port.train_step_fn(s, batch, amp)
            for _ in range(s.train_warmup):
                step()
            reset_peak(s)
            t = timed(s, step, repeats=s.train_steps, warmup=0)
            mem = peak(s)
            losses = step.losses()
        except Exception as e:  # noqa: BLE001
            rep.row(
                "training",
                f"AdelaiDet port SOLOv2 R50 train step, {key}",
                "",
                f"failed: {rep.error(f'port train {key}', e)}",
            )
            free(s)
            continue
        rep.put(
            "training",
            f"adelaidet_port {key}",
            {"step_s": t, "peak_bytes": mem, "losses": losses, "batch": bpg, "size": size},
        )
        mine = ours.get(key)
        mine_t = mine.get("step_s") if isinstance(mine, dict) else None
        mine_m = mine.get("peak_bytes") if isinstance(mine, dict) else None
        rep.row(
            "training",
            f"SOLOv2 R50 train step {key}, batch {bpg}, {size[0]}x{size[1]}, {s.train_instances} "
            f"instances: solo_d2 (SOLOv2/R50_3x.yaml) vs the AdelaiDet port, same batch",
            f"{ms(mine_t)}/step, peak {gib(mine_m)}" if mine_t else "see the row above",
            f"{ms(t)}/step, peak {gib(mem)} (AdelaiDet port)",
            "; ".join(
                x
                for x in (
                    ratio(t, mine_t),
                    f"port peak {mem / mine_m:.2f}x solo_d2's" if mem and mine_m else "",
                )
                if x
            ),
        )
        del step
        free(s)


def _bisenet_predict(model, x):
    return (
        model._predict(x)
        if hasattr(model, "_predict")
        else model([{"image": x[0]}])[0]["sem_seg"][None]
    )


def part_bisenet(s, rep, part):
    torch = _torch()
    from benchmarks.cuda import cudnn_flags  # after main() put the checkout on sys.path

    for label, config in (
        ("BiSeNetV1 R18", "BiSeNet/V1_R18_cityscapes.yaml"),
        ("BiSeNetV2", "BiSeNet/V2_cityscapes.yaml"),
    ):
        if part.over(label):
            continue
        _, model = build(s, config)
        model.eval()
        for size in s.bisenet_sizes:
            if part.over(f"{label} {size}"):
                continue
            x = torch.randn(1, 3, *size, device=s.device)
            times, agree = {}, {}
            with torch.no_grad():
                ref = _bisenet_predict(model, x).argmax(1)
                variants = [
                    ("fp32", "fp32-default", False, {}),
                    ("amp", "amp", False, {}),
                    ("amp_channels_last", "amp", True, {}),
                ]
                if label == "BiSeNetV2":
                    variants += [
                        ("amp_cudnn_off", "amp", False, {"enabled": False}),
                        ("fp32_cudnn_off", "fp32-default", False, {"enabled": False}),
                        ("amp_cudnn_benchmark", "amp", False, {"benchmark": True}),
                    ]
                for key, mode, cl, flags in variants:
                    if part.over(f"{label} {size} {key}"):
                        continue
                    xin = x.contiguous(memory_format=torch.channels_last) if cl else x
                    if cl:
                        model.to(memory_format=torch.channels_last)
                    try:
                        with cudnn_flags(**flags), precision(s, mode):
                            times[key] = timed(s, lambda: _bisenet_predict(model, xin))
                            agree[key] = (
                                (_bisenet_predict(model, xin).argmax(1) == ref)
                                .float()
                                .mean()
                                .item()
                            )
                    finally:
                        if cl:
                            model.to(memory_format=torch.contiguous_format)
            rep.put(
                "bisenet",
                f"{label} {size[0]}x{size[1]}",
                {"times_s": times, "argmax_agreement": agree},
            )
            t32 = times.get("fp32")
            for key, t in times.items():
                if key == "fp32":
                    continue
                rep.row(
                    "bisenet",
                    f"{label} inference {size[0]}x{size[1]}, {key.replace('_', ' ')} "
                    f"(argmax = fp32 argmax on {agree[key]:.1%} of pixels)",
                    f"{ms(t)} ({1 / t:.0f} FPS)",
                    f"fp32 {ms(t32)} ({1 / t32:.0f} FPS)" if t32 else "",
                    ratio(t32, t),
                )
        model = None  # noqa: F841
        free(s)
    rep.note(
        "BiSeNet fp32 rows use PyTorch's defaults (cuDNN may use TF32); 'cudnn off' = "
        "torch.backends.cudnn.enabled False (PyTorch's native convolutions)."
    )


def _profile_table(s, fn, steps):
    """``(tables, summary)``: ``fn`` profiled over ``steps`` calls after one warm-up call (CPU and
    CUDA activity; CPU only in the dry run): the top 30 ops by total and by self device time,
    and the top 3 by self time as one line."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if s.cuda else [])
    fn()
    sync(s)
    with profile(activities=acts) as prof:
        for _ in range(steps):
            fn()
        sync(s)
    dev = "device" if s.cuda else "cpu"
    avgs = prof.key_averages()
    tables = (
        f"-- sorted by {dev}_time_total\n"
        + avgs.table(sort_by=f"{dev}_time_total", row_limit=30)
        + f"\n-- sorted by self_{dev}_time_total\n"
        + avgs.table(sort_by=f"self_{dev}_time_total", row_limit=30)
    )
    self_key = f"self_{dev}_time_total"
    top = sorted(avgs, key=lambda e: getattr(e, self_key), reverse=True)[:3]
    total = sum(getattr(e, self_key) for e in avgs) or 1
    summary = ", ".join(
        f"{e.key} {getattr(e, self_key) / steps / 1e3:.2f} ms ({getattr(e, self_key) / total:.0%})"
        for e in top
    )
    return tables, summary + f"; all ops {total / steps / 1e3:.2f} ms per call"


def part_profile(s, rep, part, port):
    """``torch.profiler`` tables of the jobs below, appended to ``profiles.txt``; each job's
    ``make()`` builds what it needs and returns the call to profile (dropped after its table)."""
    torch = _torch()
    from benchmarks import baselines as bl

    n = s.candidates[0]

    def post():
        model = build(s, SOLOV2_R50)[1].eval()
        cate, mask_out, padded = synthetic_outputs(s, n)

        def call():
            with torch.no_grad(), precision(s, "fp32"):
                bl.solo_d2_postprocess(model, cate, mask_out, padded)

        return call

    def port_post():
        model = port.models(s)[1]
        cate, mask_out, padded = synthetic_outputs(s, n)

        def call():
            with torch.no_grad(), precision(s, "fp32"):
                port.postprocess(model, cate, mask_out, padded)

        return call

    def train():
        return _trainer(s, SOLOV2_R50).step

    def bisenet(amp):
        def make():
            model = build(s, "BiSeNet/V2_cityscapes.yaml")[1].eval()
            x = torch.randn(1, 3, *s.bisenet_sizes[-1], device=s.device)

            def call():
                with torch.no_grad(), precision(s, "amp" if amp else "fp32-default"):
                    _bisenet_predict(model, x)

            return call

        return make

    size = "x".join(map(str, s.bisenet_sizes[-1]))
    jobs = [(f"SOLOv2 post-processing, ~{n} candidates (fp32, TF32 off)", post)]
    if port:
        jobs.append(
            (f"AdelaiDet port post-processing, ~{n} candidates (fp32, TF32 off)", port_post)
        )
    jobs += [
        ("SOLOv2 R50 training step, fp32, recipe batch per GPU (SimpleTrainer)", train),
        (f"BiSeNetV2 inference {size}, AMP", bisenet(True)),
        (f"BiSeNetV2 inference {size}, fp32", bisenet(False)),
    ]
    unit = "CUDA" if s.cuda else "CPU"
    for title, make in jobs:
        if part.over(f"profile {title}"):
            continue
        try:
            table, summary = _profile_table(s, make(), s.profile_steps)
            with open(rep.out / "profiles.txt", "a") as f:
                f.write(
                    f"==== {title}: {s.profile_steps} calls after 1 warm-up, "
                    f"top 30 ops\n{table}\n\n"
                )
            rep.row(
                "profile",
                f"profile {title}: top ops by self {unit} time per call",
                summary,
                "",
                "profiles.txt",
            )
        except Exception as e:  # noqa: BLE001
            rep.row("profile", f"profile {title}", "failed", rep.error(f"profile {title}", e))
        free(s)


class _trainer:
    """One training step of ``config`` at the recipe's batch and input size (SimpleTrainer)."""

    def __init__(self, s, config, opts=()):
        import itertools

        from detectron2.engine import SimpleTrainer
        from detectron2.utils.events import EventStorage

        from solo_d2.engine.trainer import Trainer

        cfg, model = build(s, config, opts)
        model.train()
        batch = training_batch(s, cfg, s.train_size(cfg), s.batch_per_gpu(cfg))
        self.trainer = SimpleTrainer(
            model, itertools.repeat(batch), Trainer.build_optimizer(cfg, model)
        )
        self.storage = EventStorage(0)

    def step(self):
        with self.storage:
            self.trainer.run_step()
            self.storage.step()


# ----------------------------------------------------------------------------- main
def header(s, bundle_note, port):
    torch = _torch()
    import numpy
    import PIL

    try:
        import detectron2

        d2 = f"detectron2 {detectron2.__version__}"
    except Exception:  # noqa: BLE001
        d2 = "no detectron2"
    commit = "unknown"
    try:
        commit = (
            subprocess.run(
                ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
            or "unknown"
        )
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        commit += " (with uncommitted changes)" if dirty else ""
    except (OSError, subprocess.SubprocessError):
        pass
    if s.cuda:
        p = torch.cuda.get_device_properties(0)
        gpu = (
            f"{p.name} ({p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs), CUDA "
            f"{torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}"
        )
    else:
        gpu = "no GPU: CPU dry run (tiny sizes, 1 repeat; not figures)"
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    port_line = f"AdelaiDet port from {port.root}" if port else f"no AdelaiDet port ({port.reason})"
    short = (
        f"{date}, commit {commit}, {gpu.split(' (')[0] if s.cuda else 'CPU dry run'}, "
        f"torch {torch.__version__}"
    )
    return short, (
        f"date {date}, commit {commit}, GPU: {gpu}, torch {torch.__version__}, Python "
        f"{platform.python_version()}, numpy {numpy.__version__}, Pillow {PIL.__version__}, {d2} "
        f"({bundle_note}); {port_line}. Times: medians of {s.repeats} calls after {s.warmup} "
        "warm-up calls, torch.cuda.synchronize after each; ratio = baseline time / solo_d2 time "
        "(above 1: solo_d2 faster; BiSeNet rows: fp32 time / the row's)."
    )


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "output" / "gpu_check"))
    ap.add_argument(
        "--dry-run", action="store_true", help="CPU, tiny sizes, 1 repeat, 1 training step"
    )
    ap.add_argument(
        "--bundle",
        default=None,
        help="import detectron2 from this bundle (default: build/gpu_bundle "
        "where the running Python has no detectron2)",
    )
    ap.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    ap.add_argument(
        "--configs", nargs="+", help="training: only these configs (prefixes under configs/)"
    )
    ap.add_argument(
        "--budget-scale", type=float, default=1.0, help="multiply every part's time budget"
    )
    args = ap.parse_args(argv)

    bundle_note = use_bundle(args.bundle or DEFAULT_BUNDLE, force=args.bundle is not None)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("log.txt", "errors.txt", "profiles.txt", "pytest.txt"):
        (out / name).unlink(missing_ok=True)
    sys.stdout = Tee(sys.stdout, out / "log.txt")
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    t0 = time.perf_counter()

    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not args.dry_run:
        print(
            "gpu_check: no CUDA device here. On the CPU use --dry-run; on the device machine run\n"
            '  PYTHONPATH=build/gpu_bundle:. python3 tools/gpu_check.py --out "$OUT"',
            flush=True,
        )
        return 2
    s = Settings(args.dry_run, "cuda" if cuda and not args.dry_run else "cpu", args.budget_scale)
    s.amp_dtype = torch.float16 if s.cuda else torch.bfloat16
    if s.dry:
        torch.set_num_threads(min(2, torch.get_num_threads()))
    port = Port()
    short, full = header(s, bundle_note, port)
    rep = Report(out, full, short)
    print(rep.header, flush=True)
    rep.write()
    end, cumulative = t0 + sum(s.budgets.values()), 0.0
    for name in PARTS:
        cumulative += s.budgets[name]
        if name not in args.parts:
            continue
        part = Part(name, min(end, t0 + cumulative))
        start = time.perf_counter()
        print(f"[{name}] up to {part.left():.0f} s", flush=True)
        if part.left() <= 0:
            rep.row(name, f"part {name}", "skipped", "the run's time was spent before it")
            continue
        try:
            if name == "tests":
                part_tests(s, rep, part)
            elif name == "inference":
                part_inference(s, rep, part, port)
            elif name == "training":
                part_training(s, rep, part, port, args.configs)
            elif name == "bisenet":
                part_bisenet(s, rep, part)
            elif name == "profile":
                part_profile(s, rep, part, port)
        except Exception as e:  # noqa: BLE001 - one part's failure must not lose the others
            rep.row(name, f"part {name}", "failed", rep.error(f"part {name}", e))
            free(s)
        if part.skipped:
            rep.row(name, f"part {name}: over its budget, skipped", ", ".join(part.skipped)[:300])
        took = time.perf_counter() - start
        rep.put(name, "seconds", took)
        print(f"[{name}] {took:.0f} s", flush=True)
        rep.write()
    print(
        f"\n[gpu_check] {time.perf_counter() - t0:.0f} s; wrote "
        f"{', '.join(sorted(p.name for p in out.iterdir()))} to {out}\n",
        flush=True,
    )
    print((out / "rows.md").read_text(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
