"""STAGE's smoke pairs are real pairs: every pair of the smoke plan on the demo data keeps its
normal image outside its mask (issue: a random tiny VAE used to replace it with a grey canvas).

The generator is the smoke preset on the demo dataset at the smoke image size, with the training
shortened to a few steps: the two checks are about what the sampler does outside the mask (Alg. 1
with anomaly inference ends on the clean background latent there, and the tiny autoencoder is
lossless), which holds for any adapter weights."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import math  # noqa: E402

import lightning as L  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from benchmark.pair_checks import background_psnr, changed_inside_fraction, check_pair, dilate  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

SMOKE_IMAGE_SIZE = 128


# -- the checks themselves, by hand -----------------------------------------------------------------
def test_dilate_is_a_disk_of_the_radius():
    mask = np.zeros((21, 21), bool)
    mask[10, 10] = True
    grown = dilate(mask, 8)
    assert grown[10, 2] and grown[2, 10] and not grown[10, 1]  # 8 px along an axis, not 9
    assert grown[16, 15] and not grown[16, 16]  # 6^2 + 5^2 <= 64 < 6^2 + 6^2


def test_background_psnr_and_changed_fraction_by_hand():
    source = np.zeros((32, 32, 3), np.uint8)
    mask = np.zeros((32, 32), bool)
    mask[5, 5] = True
    image = source.copy()
    assert math.isinf(background_psnr(image, source, mask)) and changed_inside_fraction(image, source, mask) == 1.0
    image[30, 30, 0] = 10  # far outside the dilated mask, below the 16/255 change threshold
    outside = 32 * 32 - int(dilate(mask).sum())
    expected = 10 * math.log10(255**2 / (10**2 / (3 * outside)))  # MSE over the outside pixels' 3 channels
    assert background_psnr(image, source, mask) == pytest.approx(expected, rel=1e-6)  # torchmetrics: float32
    assert changed_inside_fraction(image, source, mask) == 1.0
    image[30, 30, 0] = 17  # now a changed pixel, outside
    image[5, 6] = 200  # three changed pixels inside (one is 1 px from the mask, 2 more next to it)
    image[6, 6] = 200
    image[4, 5] = 200
    assert changed_inside_fraction(image, source, mask) == pytest.approx(3 / 4)
    check = check_pair(image, source, mask)
    assert not check.passes()  # 3 of 4 changed pixels inside: below 90%
    with pytest.raises(ValueError, match="differ in size"):
        check_pair(image[:16], source, mask)


# -- every smoke pair -------------------------------------------------------------------------------
def test_every_smoke_stage_pair_keeps_its_background():
    from benchmark.config import resolve_options
    from benchmark.data.demo import demo_dataset_path
    from benchmark.data.images import load_image
    from benchmark.data.layouts import read_dataset
    from benchmark.data.split import few_shot_split
    from generators.base import collate_requests
    from generators.stage.lightning_model import StageGenerator

    split = few_shot_split(read_dataset(demo_dataset_path(), "mvtec"))
    options = resolve_options(StageGenerator, "smoke", {"train_steps": 4})
    generator = StageGenerator(options, SMOKE_IMAGE_SIZE)
    generator.setup_split(split)
    trainer = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False)
    L.seed_everything(0, verbose=False)
    L.Trainer(max_steps=options.train_steps, max_epochs=-1, **trainer).fit(generator)
    requests = generator.plan(split, seed=0)
    assert len(requests) == options.pairs_per_type * sum(len(c.defect_types) for c in split.categories.values())
    pairs = []

    class Collect(L.Callback):
        def on_predict_batch_end(self, trainer, module, outputs, batch, batch_idx, dataloader_idx=0):
            pairs.extend(outputs)

    L.Trainer(callbacks=[Collect()], **trainer).predict(
        generator, DataLoader(requests, batch_size=options.batch_size, collate_fn=collate_requests),
        return_predictions=False)
    assert [p.request.id for p in pairs] == [r.id for r in requests]
    checks = {}
    for pair in pairs:
        source = load_image(pair.request.normal_image, pair.image.shape[0])  # the pair's resolution
        checks[pair.request.id] = check_pair(pair.image, source, pair.mask)
        assert pair.mask.any() and (pair.image != source).any()  # a defect was painted, in a non-empty mask
    worst_psnr = min(c.background_psnr for c in checks.values())
    worst_inside = min(c.changed_inside for c in checks.values())
    assert worst_psnr >= 30.0, checks
    assert worst_inside >= 0.9, checks
