import json

from reasonrl.bench.vlm import VLMBenchConfig, make_workload
from reasonrl.cli import main
from reasonrl.models import load_model
from reasonrl.models.tiny_vlm import make_vlm_checkpoint, make_vlm_tokenizer


def test_bench_vlm_cli_writes_the_promised_fields(tmp_path):
    out = tmp_path / "vlm.json"
    assert main(["bench", "vlm", "--preset", "tiny", "--num-prompts", "4", "--concurrency", "2", "--median-tokens", "4",
                 "--max-tokens", "8", "--repeats", "2", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    for key in ("engine_tokens_per_s", "hf_tokens_per_s", "tower_images_per_s", "hf_tower_images_per_s", "device"):
        assert result[key] > 0 if key != "device" else result[key]
    assert result["ratio"] == result["hf_seconds"] / result["engine_seconds"]
    assert len(result["engine_seconds_per_repeat"]) == len(result["hf_seconds_per_repeat"]) == 2
    assert 4 <= result["num_images"] <= 16 and result["image_tokens"] < result["prompt_tokens"]
    assert 1 <= result["engine_vision_batches_per_run"] <= 4  # at most one tower call per prompt


def test_workload_has_one_to_four_images_and_a_heavy_tail(tmp_path):
    tok = make_vlm_tokenizer(["What is in the picture?"] * 10, vocab_size=300)
    model = load_model(make_vlm_checkpoint(tmp_path / "m", tok), "cpu")
    cfg = VLMBenchConfig(preset="tiny", num_prompts=200, image_side=(28, 40), median_tokens=16, max_tokens=1024)
    w = make_workload(tok, model, cfg)
    assert {p.num_images for p in w.prompts} == {1, 2, 3, 4}
    t = sorted(w.targets)
    assert t[len(t) * 99 // 100] > 4 * t[len(t) // 2]
    again = make_workload(tok, model, cfg)
    assert [p.input_ids for p in again.prompts] == [p.input_ids for p in w.prompts] and again.targets == w.targets
