"""Model input validation (solo_d2.utils.inputs.check_model_image), directly and through the
models and detectron2's DefaultPredictor: wrong inputs raise a clear error, never a silent
wrong result."""

import numpy as np
import pytest
import torch

from solo_d2.utils.inputs import check_model_image
from tests.helpers import REPO_ROOT

pytestmark = pytest.mark.usefixtures("single_thread")

H, W = 64, 80


def _img(dtype=torch.uint8, scale=255):
    g = torch.Generator().manual_seed(0)
    x = torch.rand((3, H, W), generator=g) * scale
    return x.round().to(dtype) if dtype == torch.uint8 else x.to(dtype)


# ----------------------------------------------------------------- the check itself


@pytest.mark.parametrize(
    "image",
    [
        _img(),  # uint8 0..255
        _img(torch.float32),  # float holding 0..255
        torch.zeros((3, H, W)),  # black frame
        torch.randint(
            0, 2, (3, H, W)
        ).float(),  # nearly black uint8 frame as DefaultPredictor passes it
        torch.full((3, 1, 1), 255.0),
    ],
)
def test_valid_images_pass(image):
    check_model_image(image, "BGR", "test")


@pytest.mark.parametrize(
    "image,match",
    [
        (_img(torch.float32, scale=1.0), r"scaled to \[0, 1\].*Multiply by 255"),
        (_img()[0], r"2-D, grayscale"),
        (_img()[:1], r"1 channel"),
        (torch.cat([_img(), _img()[:1]]), r"4 channels.*alpha"),
        (_img().permute(1, 2, 0), r"HWC layout.*permute\(2, 0, 1\)"),
        (torch.cat([_img(), _img()[:1]]).permute(1, 2, 0), r"HWC layout"),
        (_img()[None], r"batch"),
        (_img(torch.float32) - 128, r"outside 0..255"),
        (_img(torch.float32) * 2, r"outside 0..255"),
        (torch.full((3, H, W), float("nan")), r"non-finite"),
        (np.zeros((H, W, 3), np.uint8), r"ndarray, not a torch.Tensor"),
        (torch.zeros((3, 0, W)), r"empty"),
    ],
)
def test_invalid_images_are_named(image, match):
    with pytest.raises(ValueError, match=match) as e:
        check_model_image(image, "RGB", "SOLO.preprocess_image")
    msg = str(e.value)
    assert msg.startswith("SOLO.preprocess_image: ")
    assert "[3, H, W]" in msg and "RGB" in msg and "0..255" in msg  # says what is expected


# ----------------------------------------------------------------- through the models


def _solo_cfg():
    from solo_d2.engine import setup_cfg

    return setup_cfg(
        str(REPO_ROOT / "configs/Synthetic/SOLOv2_R18.yaml"),
        ["MODEL.WEIGHTS", "", "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "96"],
        device="cpu",
    )


@pytest.fixture(scope="module")
def predictor():
    from detectron2.engine import DefaultPredictor

    torch.manual_seed(0)
    return DefaultPredictor(_solo_cfg())


@pytest.fixture(scope="module")
def solo_model(predictor):
    return predictor.model


def test_default_predictor_takes_hwc_uint8_bgr_and_float_0_255(predictor):
    img = np.random.RandomState(0).randint(0, 256, (H, W, 3)).astype(np.uint8)
    out = predictor(img)
    assert out["instances"].image_size == (H, W)
    # the documented conversion for float images: the same 0..255 values give the same result
    out_f = predictor(img.astype(np.float32))
    assert len(out_f["instances"]) == len(out["instances"])


def test_default_predictor_refuses_float_image_in_0_1(predictor):
    img = np.random.RandomState(0).rand(H, W, 3).astype(np.float32)
    with pytest.raises(ValueError, match=r"scaled to \[0, 1\]"):
        predictor(img)


def test_default_predictor_refuses_4_channels(predictor):
    img = np.random.RandomState(0).randint(0, 256, (H, W, 4)).astype(np.uint8)
    with pytest.raises(ValueError, match="4 channels"):
        predictor(img)


@pytest.mark.parametrize("kind", ["gray", "chw", "tensor"])
def test_default_predictor_other_layouts_raise(predictor, kind):
    """Inputs DefaultPredictor cannot convert fail (inside detectron2's resize / transpose) and
    never return a prediction: 2-D grayscale, CHW arrays, torch tensors."""
    rng = np.random.RandomState(0)
    img = {
        "gray": rng.randint(0, 256, (H, W)).astype(np.uint8),
        "chw": rng.randint(0, 256, (3, H, W)).astype(np.uint8),
        "tensor": torch.randint(0, 256, (H, W, 3), dtype=torch.uint8),
    }[kind]
    with pytest.raises((ValueError, TypeError, AttributeError)):
        predictor(img)


@pytest.mark.parametrize(
    "image,match",
    [
        (_img().permute(1, 2, 0), "HWC"),
        (_img(torch.float32, 1.0), r"\[0, 1\]"),
        (_img()[0], "grayscale"),
    ],
)
def test_solo_model_checks_its_input(solo_model, image, match):
    solo_model.eval()
    with torch.no_grad(), pytest.raises(ValueError, match=match):
        solo_model([{"image": image, "height": H, "width": W}])


def test_bisenet_model_checks_its_input():
    from detectron2.modeling import build_model

    from solo_d2.engine import setup_cfg

    cfg = setup_cfg(
        str(REPO_ROOT / "configs/Synthetic/BiSeNetV1_R18.yaml"), ["MODEL.WEIGHTS", ""], device="cpu"
    )
    model = build_model(cfg).eval()
    with torch.no_grad():
        for image, match in (
            (_img(torch.float32, 1.0), r"\[0, 1\]"),
            (_img().permute(1, 2, 0), "HWC"),
        ):
            with pytest.raises(ValueError, match=match):
                model([{"image": image, "height": H, "width": W}])
