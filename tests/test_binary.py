"""Binary tasks with one sigmoid output (model.net.num_classes=1 on a 2-class label space): train, evaluate,
predict and compare end to end, with the threshold deciding foreground."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from segloss.models.inference import to_classes
from tests.conftest import QUIET_RUN, fit
from tests.trees.folders import write_folder_tree

SIGMOID = ["experiment=bce_dice_kvasir", "model.net.base_channels=4", "model.net.depth=2", "trainer=cpu",
           "trainer.precision=32-true", "data.num_workers=0", "data.pin_memory=false", "data.persistent_workers=false",
           "data.batch_size=4", "data.val_batch_size=4", "data.train_transform.crop_size=[24,24]",
           "data.train_transform.base_size=[24,32]", "trainer.max_steps=6", "trainer.val_check_interval=3",
           "data.dataset.val_fraction=0.34"]  # fmt: skip


def test_one_channel_logits_become_classes_at_the_threshold():
    logits = torch.tensor([[[[-2.0, -0.1, 0.1, 2.0]]]])  # σ ≈ 0.12, 0.48, 0.52, 0.88
    assert to_classes(logits).tolist() == [[[0, 0, 1, 1]]]
    assert to_classes(logits, threshold=0.3).tolist() == [[[0, 1, 1, 1]]]
    assert to_classes(logits, threshold=0.9).tolist() == [[[0, 0, 0, 0]]]
    two = torch.randn(2, 3, 4, 5)
    assert torch.equal(to_classes(two), two.argmax(1))


@pytest.mark.slow
def test_a_sigmoid_model_trains_evaluates_and_predicts_with_the_two_class_metrics(tmp_path, make_cfg):
    from segloss.eval import evaluate
    from segloss.predict import predict

    root = tmp_path / "Kvasir-SEG"
    write_folder_tree(root, [f"p{i}" for i in range(12)], size=(24, 32), seed=0)
    run = fit([*SIGMOID, *QUIET_RUN, f"data.root={root}"], tmp_path / "run")
    module = run["trainer"].lightning_module
    results = run["results"]
    assert results["IoU"].shape == (2,) and math.isfinite(float(results["mIoU"]))  # background and polyp
    assert run["best_ckpt"]
    counts = np.load(tmp_path / "run" / "per_image_val.npz")  # what make compare reads, as for softmax runs
    assert counts["tp"].shape[1] == 2 and list(counts["class_names"]) == ["background", "polyp"]

    # Evaluation: the checkpoint's logits, thresholded at 0.5, give the reported confusion matrix.
    ecfg = make_cfg([*SIGMOID, f"data.root={root}", f"ckpt_path={run['best_ckpt']}"], name="eval")
    evaluated = evaluate(ecfg)
    val = run["trainer"].datamodule.datasets["val"]
    confmat = torch.zeros(2, 2, dtype=torch.int64)
    module.eval()
    with torch.no_grad():
        for i in range(len(val)):
            item = val[i]
            logits = module(item["image"][None])
            assert logits.shape[1] == 1
            pred, mask = (logits[0, 0] > 0).long(), item["mask"]
            keep = mask != 255
            confmat += torch.bincount(mask[keep] * 2 + pred[keep], minlength=4).view(2, 2)
    assert torch.equal(evaluated["confmat"], confmat)

    # Prediction: a mask of 0/1 class indices per image, the same threshold.
    out = tmp_path / "pred"
    pcfg = make_cfg([*SIGMOID, f"data.root={root}", f"ckpt_path={run['best_ckpt']}",
                     f"input_dir={root / 'images'}", f"output_dir={out}"], name="predict")  # fmt: skip
    predict(pcfg)
    written = sorted(out.rglob("*.png"))
    assert len(written) == 12
    values = set(np.unique(np.concatenate([np.asarray(Image.open(p)).ravel() for p in written])).tolist())
    assert values <= {0, 1}
