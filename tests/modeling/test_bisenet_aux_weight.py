"""``MODEL.BISENET.AUX_LOSS_WEIGHT`` and ``MODEL.SEM_SEG_HEAD.LOSS_WEIGHT`` act on the loss dict:
with the same weights and inputs, each auxiliary / booster term scales with AUX_LOSS_WEIGHT and
the main term with LOSS_WEIGHT, and no other term changes."""

import pytest
import torch
from detectron2.modeling import build_model

from solo_d2.engine import setup_cfg
from tests.helpers import REPO_ROOT

pytestmark = pytest.mark.usefixtures("single_thread")


def _losses(config, aux_weight, main_weight=1.0):
    cfg = setup_cfg(
        str(REPO_ROOT / "configs" / config),
        [
            "MODEL.WEIGHTS",
            "",
            "MODEL.BISENET.AUX_LOSS_WEIGHT",
            str(aux_weight),
            "MODEL.SEM_SEG_HEAD.LOSS_WEIGHT",
            str(main_weight),
            "MODEL.BISENET.LOSS_TYPE",
            "ce",
        ],
        device="cpu",
    )
    torch.manual_seed(0)
    model = build_model(cfg).train()
    g = torch.Generator().manual_seed(1)
    batch = [
        {
            "image": torch.randint(0, 256, (3, 64, 96), generator=g).float(),
            "sem_seg": torch.randint(0, 19, (64, 96), generator=g),
            "height": 64,
            "width": 96,
        }
        for _ in range(2)
    ]
    return {k: float(v) for k, v in model(batch).items()}


@pytest.mark.parametrize("config", ["Synthetic/BiSeNetV1_R18.yaml", "Synthetic/BiSeNetV2.yaml"])
def test_aux_and_main_loss_weights_scale_their_terms(config):
    base = _losses(config, 1.0)
    aux_keys = [k for k in base if k != "loss_sem_seg"]
    assert "loss_sem_seg" in base and aux_keys, base  # V1: loss_aux8/16, V2: loss_booster_*
    assert all(base[k] > 0 for k in base)
    scaled = _losses(config, 0.25)
    assert sorted(scaled) == sorted(base)
    assert scaled["loss_sem_seg"] == pytest.approx(base["loss_sem_seg"], rel=1e-6)
    for k in aux_keys:
        assert scaled[k] == pytest.approx(0.25 * base[k], rel=1e-5), k
    main = _losses(config, 1.0, main_weight=3.0)
    assert main["loss_sem_seg"] == pytest.approx(3.0 * base["loss_sem_seg"], rel=1e-5)
    for k in aux_keys:
        assert main[k] == pytest.approx(base[k], rel=1e-6), k
