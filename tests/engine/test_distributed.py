"""Distributed training and evaluation, proven on CPU with 2 gloo workers.

Every multi-worker run goes through :func:`solo_d2.engine.launch` (``--num-gpus 0
--num-cpu-workers 2``); the workers live in ``tests/helpers/dist_solo_workers.py``.
"""

import json
import os
import subprocess
import sys

import pytest
import torch
from detectron2.modeling import build_model

from tests.helpers import REPO_ROOT
from tests.helpers import dist_solo_workers as W

ROOT = str(REPO_ROOT)
TIMEOUT = 300  # seconds for a train_net subprocess: a hang fails the test instead of blocking


@pytest.fixture(scope="module")
def state_path(tmp_path_factory, synthetic_coco):
    """One seeded random initialization of the tiny SOLOv2, saved once, loaded by every worker."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("dist_state") / "solov2_tiny.pth"
    torch.save(build_model(W.tiny_cfg()).state_dict(), path)
    return str(path)


# (image of rank 0, image of rank 1); image 2 has no instances, so rank 1 has no positives
SPLITS = [(0, 1), (0, 2)]


def test_two_workers_match_one_process_with_both_images(state_path, tmp_path):
    W.launch_cpu_workers(W.grads_worker, state_path, str(tmp_path), SPLITS)
    ranks = [torch.load(tmp_path / f"grads_rank{r}.pt") for r in range(2)]
    with W.native_conv():
        single = [
            W.loss_and_grads(W.load_model(state_path, True), [W.make_input(i) for i in s])
            for s in SPLITS
        ]
        # what DDP would average with a per-worker normalizer (no all-reduce of the positives)
        local = [
            W.loss_and_grads(W.load_model(state_path, True), [W.make_input(i)])[1]
            for i in SPLITS[0]
        ]

    for k, split in enumerate(SPLITS):
        (loss0, grads0), (loss1, grads1) = ranks[0][k], ranks[1][k]
        single_losses, single_grads = single[k]
        # loss: the mean of the workers' losses equals the loss of one process on both images
        for name, value in single_losses.items():
            assert (loss0[name] + loss1[name]) / 2 == pytest.approx(value, rel=1e-5, abs=1e-7), (
                split,
                name,
            )
        # gradients: DDP leaves the same averaged gradient on both workers, equal to one process's
        assert grads0.keys() == grads1.keys() == single_grads.keys()
        for name, g in single_grads.items():
            assert torch.equal(grads0[name], grads1[name]), (split, name)
            torch.testing.assert_close(grads0[name], g, rtol=0, atol=1e-5, msg=f"{split} {name}")

    # Control: the per-worker normalizer would give clearly different gradients, so the
    # comparison above does check the all-reduce of the positive count.
    worst = max(
        ((local[0][n] + local[1][n]) / 2 - g).abs().max().item() / (g.abs().max().item() + 1e-12)
        for n, g in single[0][1].items()
    )
    assert worst > 1e-2


def test_sync_bn_on_cpu_workers_matches_one_process_batch(tmp_path):
    """MODEL.SYNC_BN on 2 CPU workers with 1 image each == plain BatchNorm on both images.

    In float64: detectron2's NaiveSyncBatchNorm (what CPU workers get) computes the variance
    in one pass as E[x^2] - E[x]^2, which in float32 moves the gradients of this untrained
    net by up to a few percent relative to BatchNorm's two-pass kernel; the logic is exact.
    """
    torch.manual_seed(0)
    state = tmp_path / "bisenet.pth"
    torch.save(W.bisenet_model().state_dict(), state)
    W.launch_cpu_workers(W.syncbn_grads_worker, str(state), str(tmp_path))
    ranks = [torch.load(tmp_path / f"syncbn_rank{r}.pt") for r in range(2)]
    assert ranks[0]["norms"] == ["NaiveSyncBatchNorm"]  # every BatchNorm2d was converted
    model = W.bisenet_model(str(state)).double()
    assert any(type(m) is torch.nn.BatchNorm2d for m in model.modules())
    with W.native_conv():
        losses, grads = W.loss_and_grads(model, [W.make_seg_input(0), W.make_seg_input(1)])
    for name, value in losses.items():
        mean = (ranks[0]["losses"][name] + ranks[1]["losses"][name]) / 2
        assert mean == pytest.approx(value, rel=1e-6), name  # the loss itself is float32
    for name, g in grads.items():
        assert torch.equal(ranks[0]["grads"][name], ranks[1]["grads"][name]), name
        torch.testing.assert_close(ranks[0]["grads"][name], g, rtol=0, atol=1e-9, msg=name)


def test_parameters_stay_identical_on_both_workers_after_training(tmp_path):
    W.launch_cpu_workers(W.train_worker, str(tmp_path), 3)
    ranks = [torch.load(tmp_path / f"train_rank{r}.pt") for r in range(2)]
    assert [r["world"] for r in ranks] == [2, 2]
    # the ranks seeded different random weights; DDP started both from rank 0's
    for name, v in ranks[0]["initial"].items():
        assert torch.equal(v, ranks[1]["initial"][name]), name
    changed = 0
    for name, v in ranks[0]["final"].items():
        assert torch.equal(v, ranks[1]["final"][name]), (
            f"{name} differs between workers after training"
        )
        changed += not torch.equal(v, ranks[0]["initial"][name])
    assert changed > len(ranks[0]["final"]) // 2  # the optimizer did step (most tensors moved)


def _sorted_predictions(path):
    with open(path) as f:
        preds = json.load(f)
    return sorted(preds, key=lambda p: (p["image_id"], p["category_id"], -p["score"], p["bbox"]))


def test_distributed_evaluation_equals_single_process(state_path, tmp_path):
    dist_dir, single_dir = tmp_path / "dist", tmp_path / "single"
    dist_dir.mkdir()
    W.launch_cpu_workers(W.eval_worker, state_path, str(dist_dir))
    ranks = []
    for r in range(2):
        with open(dist_dir / f"eval_rank{r}.json") as f:
            ranks.append(json.load(f))
    # the dataset was split between the workers, and only rank 0 reports the gathered result
    assert [r["num_images"] for r in ranks] == [8, 8]
    assert ranks[1]["results"] == {}

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers ran single-threaded too: same float summation order
    try:
        single, num_images = W.evaluate(state_path, str(single_dir), distributed=False)
    finally:
        torch.set_num_threads(threads)
    assert num_images == 16
    dist_res = ranks[0]["results"]
    assert set(dist_res) == {"segm", "bbox"} == set(single)
    for task in ("segm", "bbox"):
        assert dist_res[task].keys() == single[task].keys()
        for metric, value in single[task].items():
            assert dist_res[task][metric] == pytest.approx(value, abs=1e-9, nan_ok=True), (
                f"{task}/{metric}"
            )
    assert single["bbox"]["AP"] > 0  # a real, non-trivial AP is being compared

    # the gathered predictions are those of the single process, from all 16 images
    d = _sorted_predictions(dist_dir / "coco_instances_results.json")
    s = _sorted_predictions(single_dir / "coco_instances_results.json")
    assert len(d) == len(s) > 0
    assert len({p["image_id"] for p in d}) == 16
    for a, b in zip(d, s):
        assert (a["image_id"], a["category_id"], a["segmentation"]) == (
            b["image_id"],
            b["category_id"],
            b["segmentation"],
        )
        assert a["score"] == pytest.approx(b["score"], abs=1e-6)


def _train_net(*argv, output_dir, timeout=TIMEOUT):
    cmd = [
        sys.executable,
        os.path.join(ROOT, "tools", "train_net.py"),
        "--config-file",
        W.CONFIG,
        "--num-gpus",
        "0",
        "--num-cpu-workers",
        "2",
        "--dist-url",
        "auto",
        *argv,
        *W.TINY_OPTS,
        "OUTPUT_DIR",
        str(output_dir),
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def test_train_net_with_two_cpu_workers_trains_and_evaluates(tmp_path, synthetic_coco):
    out = tmp_path / "out"
    proc = _train_net(
        "SOLVER.IMS_PER_BATCH",
        "2",
        "SOLVER.MAX_ITER",
        "4",
        "SOLVER.WARMUP_ITERS",
        "2",
        "SOLVER.CHECKPOINT_PERIOD",
        "100000",
        "TEST.EVAL_PERIOD",
        "0",
        output_dir=out,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    records = [
        json.loads(line) for line in (out / "metrics.json").read_text().splitlines() if line.strip()
    ]
    train = [r for r in records if "total_loss" in r]
    assert train and train[-1]["iteration"] == 3
    assert all(torch.isfinite(torch.tensor(r["total_loss"])) for r in train)
    # DefaultTrainer's final evaluation ran on the gathered predictions and was logged
    evals = [r for r in records if "segm/AP" in r]
    assert evals and "bbox/AP" in evals[-1]
    assert (out / "inference" / "coco_instances_results.json").is_file()
    assert (out / "model_final.pth").is_file()


def test_train_net_two_machines_commands_on_one_host(tmp_path, synthetic_coco):
    """The documented two-machine commands (``--num-machines 2 --machine-rank 0|1 --dist-url
    tcp://HOST0:PORT``), with both "machines" on this host and one CPU worker each."""
    from detectron2.engine.launch import _find_free_port

    url = f"tcp://127.0.0.1:{_find_free_port()}"
    out = tmp_path / "out"
    procs = []
    for machine_rank in (0, 1):
        cmd = [
            sys.executable,
            os.path.join(ROOT, "tools", "train_net.py"),
            "--config-file",
            W.CONFIG,
            "--num-gpus",
            "0",
            "--num-cpu-workers",
            "1",
            "--num-machines",
            "2",
            "--machine-rank",
            str(machine_rank),
            "--dist-url",
            url,
            *W.TINY_OPTS,
            "SOLVER.IMS_PER_BATCH",
            "2",
            "SOLVER.MAX_ITER",
            "2",
            "SOLVER.CHECKPOINT_PERIOD",
            "100000",
            "DATASETS.TEST",
            "()",
            "OUTPUT_DIR",
            str(out),
        ]
        procs.append(
            subprocess.Popen(
                cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
        )
    try:
        logs = [p.communicate(timeout=TIMEOUT)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    assert "Rank of current process: 0. World size: 2" in logs[0]
    # detectron2 logs ranks > 0 to their own file only
    assert "Rank of current process: 1. World size: 2" in (out / "log.txt.rank1").read_text()
    records = [json.loads(x) for x in (out / "metrics.json").read_text().splitlines() if x.strip()]
    assert records[-1]["iteration"] == 1 and (out / "model_final.pth").is_file()


def test_train_net_worker_crash_fails_the_run_with_the_error(tmp_path, synthetic_coco):
    code = (
        "import sys; sys.path.insert(0, %r)\n"
        "from tests.helpers.dist_solo_workers import run_crashing_train_net\n"
        "run_crashing_train_net(sys.argv[1:])\n" % ROOT
    )
    argv = [
        "--config-file",
        W.CONFIG,
        "--num-gpus",
        "0",
        "--num-cpu-workers",
        "2",
        "--dist-url",
        "auto",
        *W.TINY_OPTS,
        "SOLVER.IMS_PER_BATCH",
        "2",
        "SOLVER.MAX_ITER",
        "50",
        "OUTPUT_DIR",
        str(tmp_path / "out"),
    ]
    proc = subprocess.run(
        [sys.executable, "-c", code, *argv],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=ROOT,
    )
    assert proc.returncode != 0
    assert "worker rank 1 failed" in proc.stderr
    assert "injected failure on rank 1 at iteration 1" in proc.stderr
    # it stopped right there: rank 0 did not go on training to MAX_ITER
    assert not (tmp_path / "out" / "model_final.pth").exists()
