"""Split seeds of the shapes-world data (`shapes`, `lvr`, `data doctor`): the splits never share data,
and the data of the seeds in range is what it always was (shipped models and documented figures use it)."""

import hashlib
import json

import pytest

from reasonrl.envs.shapes import ShapesVQAConfig, ShapesVQAEnvironment
from reasonrl.reward.imagedoctor.export import DoctorDataConfig, judge_examples
from reasonrl.vision.lvr.env import LVRShapesConfig, LVRShapesEnvironment

# sha256[:16] of (the images' pixels, the rows) of 3 problems at seed 0, from the code before the seed check
ENV_DATA = {
    ("shapes", "train"): ("4fea10d06fbd8e23", "a0ded9227a341484"),
    ("shapes", "eval"): ("02a2816ee0fb6754", "af0a3c483b2e4614"),
    ("shapes", "test"): ("f701638d17b4a1ab", "16031ce02ce434fe"),
    ("lvr", "train"): ("8a9bd556fa2f003b", "3e6bd2a42673cbf8"),
    ("lvr", "eval"): ("9c2d06fdda3457bc", "e6432c66aa0cc6c7"),
    ("lvr", "test"): ("e9d6fe0e6727d2ea", "9b8e9dbd3bddab25"),
}
DOCTOR_DATA = {"train": ("b53ddeb8a274d904", "a1af65db880587da"), "eval": ("744932350c5dcbe2", "882c2e4853ec0152")}
SEEDS_PER_SPLIT = 1_000_000  # eval + 1,000,000 is test + 0
MAX_IMAGE_SIZE = 2048
ENVS = {"shapes": ShapesVQAEnvironment, "lvr": LVRShapesEnvironment}


def _hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


@pytest.mark.parametrize("name,split", list(ENV_DATA))
def test_seed_zero_data_is_unchanged(name, split):
    problems = ENVS[name]().problems(3, 0, split)
    assert (_hash(b"".join(p.rendering.image.tobytes() for p in problems)),
            _hash(json.dumps([p.row for p in problems]).encode())) == ENV_DATA[name, split]


@pytest.mark.parametrize("split", list(DOCTOR_DATA))
def test_seed_zero_judge_data_is_unchanged(tmp_path, split):
    examples = judge_examples(DoctorDataConfig(out=str(tmp_path), n=3, seed=0, split=split))
    assert (_hash(b"".join(e.image.tobytes() for e in examples)),
            _hash(json.dumps([e.judgement() for e in examples]).encode())) == DOCTOR_DATA[split]


@pytest.mark.parametrize("split,seed", [("eval", -1), ("train", 1_000_003), ("eval", 1_000_000)])
@pytest.mark.parametrize("name", list(ENVS))
def test_a_seed_that_would_reach_another_split_is_refused(name, split, seed):
    env = ENVS[name]()  # train + 1,000,003 is eval + 0; eval + 1,000,000 is test + 0; eval - 1 is train + 1,000,002
    with pytest.raises(ValueError, match=r"--seed.*>= 0 and < 1,000,000"):
        env.problems(1, seed, split)
    assert len(env.problems(1, SEEDS_PER_SPLIT - 1, "train")) == 1  # the last seed in range


@pytest.mark.parametrize("seed", [-1, SEEDS_PER_SPLIT, 1_000_003])
def test_judge_data_refuses_a_seed_that_would_reach_another_split(tmp_path, seed):
    with pytest.raises(ValueError, match=r"--seed.*>= 0 and < 1,000,000"):
        DoctorDataConfig(out=str(tmp_path), seed=seed)
    DoctorDataConfig(out=str(tmp_path), seed=SEEDS_PER_SPLIT - 1)


def test_an_image_size_over_the_maximum_is_refused_naming_the_flag(tmp_path):
    match = rf"--image-size\b.*at most {MAX_IMAGE_SIZE}"
    with pytest.raises(ValueError, match=match):
        ShapesVQAEnvironment(ShapesVQAConfig(image_size=MAX_IMAGE_SIZE + 1))
    with pytest.raises(ValueError, match=match):
        LVRShapesEnvironment(LVRShapesConfig(image_size=MAX_IMAGE_SIZE + 1))
    with pytest.raises(ValueError, match=match):
        DoctorDataConfig(out=str(tmp_path), image_size=MAX_IMAGE_SIZE + 1)
    DoctorDataConfig(out=str(tmp_path), image_size=MAX_IMAGE_SIZE)
