"""The shipped small VLM (reasonrl/demo/vlm, `python -m reasonrl.demo.vlm_policy`) is a real
Qwen2.5-VL checkpoint that looks at its image: held-out answers are better with the scene than with
a blank image, which is what `recipes/shapes-vqa.yaml` needs to have something to improve."""

import pytest

from reasonrl.demo.vlm_policy import ENV, SHIPPED, image_reliance
from reasonrl.models import load_model
from reasonrl.models.qwen2_5_vl.config import VLMConfig


def test_the_shipped_vlm_loads_as_qwen2_5_vl():
    cfg = VLMConfig.from_dir(SHIPPED)
    model = load_model(SHIPPED)
    assert model.image_config is not None and cfg.vision.spatial_merge_size == 2
    assert ENV.image_size % 28 == 0  # whole merged tokens


@pytest.mark.slow
def test_the_shipped_vlm_answers_better_with_the_scene_than_with_a_blank_image():
    acc = image_reliance(SHIPPED, n=64)
    assert acc["scene"]["accuracy"] > acc["blank"]["accuracy"], acc
    assert acc["scene"]["colour"] >= acc["blank"]["colour"] + 0.15, acc  # naming a colour needs the pixels
    assert acc["scene"]["shape"] > acc["blank"]["shape"], acc
