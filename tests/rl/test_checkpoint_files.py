"""What a checkpoint keeps of its source, and which checkpoints a run keeps: generation_config.json
(end-of-turn ids and sampling defaults) survives a save, and checkpoints are ordered by step."""

import json
import shutil

import torch

from reasonrl.models import Tokenizer, load_model
from reasonrl.models.loader import save_model
from reasonrl.rl.checkpoint import latest_checkpoint, list_checkpoints


def test_a_saved_checkpoint_keeps_the_generation_config_and_every_end_of_sequence_id(hf_checkpoint, tokenizer, tmp_path):
    import transformers

    src, _ = hf_checkpoint("qwen2", tokenizer=tokenizer)
    ckpt = tmp_path / "src"
    shutil.copytree(src, ckpt)
    eos = tokenizer.eos_token_ids[0]
    # an instruct checkpoint: config.json names one end of sequence, generation_config.json both
    (ckpt / "generation_config.json").write_text(json.dumps({"eos_token_id": [eos, 3], "temperature": 0.7, "top_p": 0.8}))
    assert set(Tokenizer.from_dir(ckpt).eos_token_ids) == {eos, 3}
    save_model(load_model(ckpt, "cpu"), tmp_path / "saved", Tokenizer.from_dir(ckpt))
    gen = json.loads((tmp_path / "saved" / "generation_config.json").read_text())
    assert set(gen["eos_token_id"]) == {eos, 3} and gen["temperature"] == 0.7 and gen["top_p"] == 0.8  # only eos before
    assert set(Tokenizer.from_dir(tmp_path / "saved").eos_token_ids) == {eos, 3}
    loaded = transformers.GenerationConfig.from_pretrained(tmp_path / "saved")
    assert set(loaded.eos_token_id) == {eos, 3} and loaded.temperature == 0.7


def test_checkpoints_are_ordered_by_step_not_by_name(tmp_path):
    for step in (999_999, 1_000_000, 5):
        path = tmp_path / "checkpoints" / f"step_{step}"
        path.mkdir(parents=True)
        torch.save({}, path / "trainer_state.pt")
    (tmp_path / "checkpoints" / "step_7.tmp").mkdir()  # a save that did not finish
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_5", "step_999999", "step_1000000"]
    assert latest_checkpoint(tmp_path).name == "step_1000000"  # step_999999 before, and keep=1 deleted the newest
