"""The user-facing tools, run as users run them (subprocesses on the real configs)."""

import json

import cv2
import numpy as np
import pytest

from tests.helpers import REPO_ROOT, run_tool


def _images(tmp_path, n=2):
    rng = np.random.RandomState(0)
    paths = []
    for i in range(n):
        img = np.full((120, 160, 3), 40, np.uint8)
        cv2.rectangle(img, (20 + 10 * i, 30), (80 + 10 * i, 90), (0, 0, 220), -1)
        img += rng.randint(0, 20, img.shape).astype(np.uint8)
        p = tmp_path / f"img{i}.png"
        cv2.imwrite(str(p), img)
        paths.append(p)
    return paths


@pytest.mark.parametrize(
    "config",
    [
        "Synthetic/SOLOv2Light_R18.yaml",
        "Synthetic/BiSeNetV2.yaml",
        "Synthetic/SOLOv2_panoptic.yaml",
    ],
)
def test_demo_writes_visualizations_and_reports_bad_inputs(
    tmp_path, config, synthetic_coco, synthetic_cityscapes
):
    imgs = _images(tmp_path)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    missing = tmp_path / "missing.png"
    out = tmp_path / "vis"
    proc = run_tool(
        "tools/demo.py",
        "--config-file",
        REPO_ROOT / "configs" / config,
        "--output",
        out,
        "--input",
        str(tmp_path / "img*.png"),
        bad,
        missing,
        "--confidence-threshold",
        "0.0",
        "--allow-random-weights",
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert f"cannot read input {bad}: not a readable image" in proc.stderr
    assert f"cannot read input {missing}: no such file" in proc.stderr
    assert "2 of 4 inputs could not be read" in proc.stderr
    for p in imgs:  # the good inputs were still processed, at their own size
        vis = cv2.imread(str(out / p.name))
        assert vis is not None and vis.shape == (120, 160, 3)


def test_demo_keeps_outputs_of_inputs_with_the_same_name(tmp_path, synthetic_coco):
    """a.png, a.jpg, x/a.png, y/a.png: four inputs, four visualizations, none overwritten."""
    src = _images(tmp_path, 4)
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    inputs = [
        tmp_path / "a.png",
        tmp_path / "a.jpg",
        tmp_path / "x" / "a.png",
        tmp_path / "y" / "a.png",
    ]
    for s, d in zip(src, inputs):
        cv2.imwrite(str(d), cv2.imread(str(s)))
    out = tmp_path / "vis"
    proc = run_tool(
        "tools/demo.py",
        "--config-file",
        REPO_ROOT / "configs/Synthetic/SOLOv2Light_R18.yaml",
        "--output",
        out,
        "--input",
        *inputs,
        "--allow-random-weights",
        "--opts",
        "INPUT.MIN_SIZE_TEST",
        "64",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(["a_png.png", "a_jpg.png", "x__a_png.png", "y__a_png.png"])
    for i, name in enumerate(["a_png.png", "a_jpg.png", "x__a_png.png", "y__a_png.png"]):
        assert f"wrote {out / name}" in proc.stderr
    help_text = run_tool("tools/demo.py", "--help").stdout
    assert "a_png.png" in help_text and "x__a_png.png" in help_text  # the naming is documented


def test_demo_output_names_are_unique_and_deterministic():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "solo_d2_demo_tool", REPO_ROOT / "tools" / "demo.py"
    )
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    paths = ["d/a.png", "d/a.jpg", "d/b.png", "x/c.png", "y/c.png", "d/a_png.png", "d/a.png"]
    names = demo.output_names(paths)
    assert names == [
        "a_png.png",
        "a_jpg.png",
        "b.png",
        "x__c_png.png",
        "y__c_png.png",
        "a_png-2.png",
        "a_png-3.png",
    ]
    assert len(set(names)) == len(names) and demo.output_names(paths) == names


def test_demo_refuses_random_weights(tmp_path):
    img = _images(tmp_path, 1)[0]
    proc = run_tool(
        "tools/demo.py",
        "--config-file",
        REPO_ROOT / "configs/Synthetic/SOLOv2Light_R18.yaml",
        "--output",
        tmp_path / "vis",
        "--input",
        img,
    )
    assert proc.returncode == 2
    assert "MODEL.WEIGHTS is empty" in proc.stderr and "--allow-random-weights" in proc.stderr
    assert not (tmp_path / "vis").exists()


def test_demo_rejects_a_missing_config(tmp_path):
    proc = run_tool("tools/demo.py", "--config-file", tmp_path / "nope.yaml", "--input", "x.png")
    assert proc.returncode != 0 and "nope.yaml does not exist" in proc.stderr


def test_plot_metrics(tmp_path):
    metrics = tmp_path / "metrics.json"
    metrics.write_text(
        "\n".join(
            json.dumps(
                {
                    "iteration": i,
                    "total_loss": 3.0 / (i + 1),
                    "loss_mask": 2.0 / (i + 1),
                    "lr": 0.01,
                }
            )
            for i in range(20)
        )
        + "\n"
        + json.dumps({"segm/AP": 10.0})
    )
    proc = run_tool("tools/plot_metrics.py", metrics, "-o", tmp_path / "l.png")
    assert proc.returncode == 0, proc.stderr
    img = cv2.imread(str(tmp_path / "l.png"))
    assert img is not None and img.shape[0] > 100
    metrics.write_text('{"iteration": 1}\n')
    assert "has no loss entries" in run_tool("tools/plot_metrics.py", metrics).stderr


@pytest.mark.parametrize(
    "config,metric",
    [
        ("Synthetic/SOLOv2Light_R18.yaml", "segm/AP"),
        ("Synthetic/SOLOv2_R18_cityscapes.yaml", "segm/AP"),
        ("Synthetic/BiSeNetV1_R18.yaml", "sem_seg/mIoU"),
        ("Synthetic/BiSeNetV2.yaml", "sem_seg/mIoU"),
        ("Synthetic/SOLOv2_panoptic.yaml", "panoptic_seg/PQ_st"),
        (
            "Synthetic/SOLOv2_panoptic_cityscapes.yaml",
            "cityscapes_panoptic_seg/PQ_th",
        ),  # and panoptic_seg/PQ
    ],
)
def test_train_net_trains_and_evaluates_on_cpu(
    tmp_path, config, metric, synthetic_coco, synthetic_cityscapes
):
    out = tmp_path / "out"
    # after two AdamW steps most cells pass the score threshold: fewer candidates keep this quick
    fast = (
        ["MODEL.SOLO.SCORE_THR", "0.5", "MODEL.SOLO.NMS_PRE", "50"] if "panoptic" in config else []
    )
    proc = run_tool(
        "tools/train_net.py",
        "--config-file",
        REPO_ROOT / "configs" / config,
        "--num-gpus",
        "0",
        "SOLVER.MAX_ITER",
        "2",
        "SOLVER.IMS_PER_BATCH",
        "2",
        "TEST.EVAL_PERIOD",
        "0",
        "OUTPUT_DIR",
        out,
        *fast,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    records = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    assert any("total_loss" in r and np.isfinite(r["total_loss"]) for r in records)
    evals = [r for r in records if metric in r]
    assert evals, f"no {metric} in metrics.json"
    assert (out / "model_final.pth").is_file()
    assert list(out.glob("events.out.tfevents.*")), "no TensorBoard events"
