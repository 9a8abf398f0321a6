"""What a checkpoint keeps of its source, and which checkpoints a run keeps: generation_config.json
(end-of-turn ids and sampling defaults) survives a save, checkpoints are ordered by step, and what a
save publishes is on disk first."""

import json
import os
import shutil
from pathlib import Path

import torch

from reasonrl.models import Tokenizer, load_model
from reasonrl.models.loader import has_weights, local_to_hf, read_tensors, save_model
from reasonrl.models.model import DecoderLM
from reasonrl.models.tiny import init_weights, tiny_config
from reasonrl.rl.checkpoint import latest_checkpoint, list_checkpoints, save_checkpoint


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


def _tiny_model(tokenizer):
    return init_weights(DecoderLM(tiny_config("qwen2", vocab_size=tokenizer.vocab_size, hidden_size=32, num_layers=1)))


def test_a_checkpoint_is_flushed_to_disk_before_it_is_renamed_into_place(tokenizer, tmp_path, monkeypatch):
    """Nothing was fsynced: after a power cut the latest checkpoint could hold a truncated
    trainer_state.pt or an empty model.safetensors, and the resume stopped on it."""
    synced, at_rename = [], []
    fsync, rename = os.fsync, Path.rename

    def recorded_fsync(fd):
        synced.append(Path(os.readlink(f"/proc/self/fd/{fd}")))
        fsync(fd)

    def recorded_rename(self, target):
        at_rename.append(len(synced))
        return rename(self, target)

    monkeypatch.setattr(os, "fsync", recorded_fsync)
    monkeypatch.setattr(Path, "rename", recorded_rename)
    final = save_checkpoint(tmp_path, 1, _tiny_model(tokenizer), tokenizer, {"step": 1}, keep=2)
    tmp = final.with_name(final.name + ".tmp")
    [n] = at_rename
    assert {tmp / name for name in os.listdir(final)} | {tmp} <= set(synced[:n])  # every file, and their names
    assert final.parent in synced[n:]  # the rename itself


def test_an_atomic_save_into_a_directory_replaces_another_layout_of_the_weights(tokenizer, tmp_path):
    """Saved over a model in one file as shards and back, weights moved in last: no stale file is left."""
    model = _tiny_model(tokenizer)
    save_model(model, tmp_path, tokenizer)
    (tmp_path / "metrics.jsonl").write_text("{}\n")  # a run's own files stay
    save_model(model, tmp_path, tokenizer, max_shard_bytes=1 << 14, atomic=True)
    assert has_weights(tmp_path) and not (tmp_path / "model.safetensors").exists() and not (tmp_path / ".saving").exists()
    assert {n for n, _ in read_tensors(tmp_path)} == local_to_hf(model).keys() and (tmp_path / "metrics.jsonl").is_file()
    save_model(model, tmp_path, tokenizer, atomic=True)  # and back to one file: no shard is left
    assert sorted(p.name for p in tmp_path.glob("model*")) == ["model.safetensors"]
