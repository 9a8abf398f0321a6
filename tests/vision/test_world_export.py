import json

import numpy as np
import pytest

from reasonrl.vision.world import problems
from reasonrl.vision.world import FAMILIES, Scene, ShapesDataConfig, detect, export_shapes, read_png, render

COMMON = {"id", "image", "width", "height", "background", "objects", "scene"}
TASK_KEYS = {
    "vqa": {"question", "answer", "family", "answer_type", "needs_image", "roi", "targets"},
    "caption": {"caption"},
    "layout": {"prompt"},
}
OBJECT_KEYS = {"shape", "colour", "size", "texture", "stripe_colour", "box", "visible_box", "text"}


def _export(tmp_path, name, **kwargs):
    cfg = ShapesDataConfig(out=str(tmp_path / name), **kwargs)
    written = export_shapes(cfg)
    rows = [json.loads(line) for line in (tmp_path / name / f"{cfg.task}.jsonl").read_text().splitlines()]
    return written, rows


def _files(directory):
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_same_seed_writes_byte_identical_files(tmp_path):
    _export(tmp_path, "a", task="vqa", n=24, seed=5)
    _export(tmp_path, "b", task="vqa", n=24, seed=5)
    first, second = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert len(first) == 25 and first == second


@pytest.mark.parametrize("task", ["vqa", "caption", "layout"])
def test_rows_have_the_task_schema_and_images_are_their_scenes(tmp_path, task):
    written, rows = _export(tmp_path, task, task=task, n=16, seed=1)
    assert written == len(rows) == 16
    for row in rows:
        assert set(row) == COMMON | TASK_KEYS[task]
        image = read_png(tmp_path / task / row["image"])
        scene = Scene.from_dict(row["scene"])
        assert image.shape == (112, 112, 3) and (image == render(scene).image).all()
        assert [o["box"] for o in row["objects"]] == [list(scene.box(i)) for i in range(len(scene.objects))]
        assert all(set(o) == OBJECT_KEYS and o["visible_box"] == o["box"] for o in row["objects"])
        assert len(detect(image)) == len(row["objects"])
        if task == "vqa" and row["roi"] is not None:
            x0, y0, x1, y1 = row["roi"]
            assert 0 <= x0 < x1 <= 112 and 0 <= y0 < y1 <= 112


def test_vqa_takes_the_families_in_turn_and_marks_text_questions(tmp_path):
    _, rows = _export(tmp_path, "v", task="vqa", n=2 * len(FAMILIES), seed=2)
    assert [r["family"] for r in rows] == list(FAMILIES) * 2
    assert all(r["needs_image"] == (r["family"] != "text") for r in rows)
    _, rows = _export(tmp_path, "d", task="vqa", n=6, seed=2, families=("detail",))
    assert {r["family"] for r in rows} == {"detail"} and all(r["roi"] for r in rows)


def _key(row):
    return json.dumps(row["scene"], sort_keys=True) + row.get("question", "")


def test_problems_are_unique_and_other_seeds_give_other_problems(tmp_path):
    for task in ("vqa", "caption"):
        _, rows = _export(tmp_path, f"{task}0", task=task, n=150, seed=0)
        _, other = _export(tmp_path, f"{task}1", task=task, n=150, seed=1)
        assert len({_key(r) for r in rows}) == 150
        assert not {_key(r) for r in rows} & {_key(r) for r in other}


def test_repeated_problems_are_skipped(monkeypatch, make_scene):
    # three scenes only: their count questions soon repeat, and repeats must be skipped
    pool = [make_scene(("circle", "red", "small", 8, 8)), make_scene(("star", "blue", "large", 40, 40)),
            make_scene(("square", "red", "small", 8, 8), ("cross", "green", "medium", 60, 60))]
    monkeypatch.setattr(problems, "sample_scene", lambda rng, cfg: pool[int(rng.integers(len(pool)))])
    rows = [p.row for p in problems.iter_problems(ShapesDataConfig(n=25, families=("count",)))]
    assert len({_key(r) for r in rows}) == 25
    with pytest.raises(ValueError, match="no new count problem"):
        list(problems.iter_problems(ShapesDataConfig(n=1000, families=("count",))))


def test_options_reach_the_scenes(tmp_path):
    _, rows = _export(tmp_path, "o", task="layout", n=20, seed=3, image_size=224, min_objects=3, max_objects=3,
                      striped_fraction=1.0, gradient_fraction=0.0, occlusion=True)
    assert all(r["width"] == r["height"] == 224 and len(r["objects"]) == 3 and r["background"] == "plain" for r in rows)
    assert all(o["texture"] == "striped" for r in rows for o in r["objects"])
    assert any(o["visible_box"] != o["box"] for r in rows for o in r["objects"])  # something is covered


@pytest.mark.parametrize("bad, field", [
    (dict(task="segment"), "task"), (dict(n=-1), "n"), (dict(image_size=32), "image_size"),
    (dict(families=("colors",)), "families"), (dict(min_objects=0), "min_objects"),
])
def test_bad_options_name_the_field(bad, field):
    with pytest.raises(ValueError, match=field):
        ShapesDataConfig(**bad)


def test_a_family_the_scenes_cannot_ask_is_an_error_naming_it(tmp_path):
    one_object = ShapesDataConfig(out=str(tmp_path), n=2, families=("extreme",), min_objects=1, max_objects=1)
    with pytest.raises(ValueError, match="no new extreme problem"):
        export_shapes(one_object)


def test_a_second_export_into_the_same_out_is_refused_unless_overwrite(tmp_path):
    from reasonrl.vision.world.export import ShapesExportConfig, export_command

    _export(tmp_path, "d", task="caption", n=3, seed=0)  # another task's files are left alone
    export_command(ShapesExportConfig(out=str(tmp_path / "d"), n=6, seed=0))
    with pytest.raises(ValueError, match="holds an earlier run's output.*--overwrite"):
        export_command(ShapesExportConfig(out=str(tmp_path / "d"), n=2, seed=1))
    assert len(list((tmp_path / "d" / "images").glob("vqa_*.png"))) == 6  # refused before anything was written
    export_command(ShapesExportConfig(out=str(tmp_path / "d"), n=2, seed=1, overwrite=True))
    _export(tmp_path, "fresh", n=2, seed=1)
    files = _files(tmp_path / "d")
    assert {k: v for k, v in files.items() if "caption" not in k} == _files(tmp_path / "fresh")  # no stale images
    assert sum("caption" in k for k in files) == 4


def test_a_stopped_export_leaves_no_jsonl_that_looks_complete_and_says_so(tmp_path, monkeypatch):
    from reasonrl.vision.world import export

    out = tmp_path / "d"
    real, calls = export.write_png, []

    def write_then_stop(image, path):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt
        real(image, path)

    monkeypatch.setattr(export, "write_png", write_then_stop)
    with pytest.raises(KeyboardInterrupt, match=r"vqa\.jsonl\.partial.*--overwrite") as stopped:
        export_shapes(ShapesDataConfig(out=str(out), n=10))
    assert "nothing" not in str(stopped.value) and not (out / "vqa.jsonl").exists()
    with pytest.raises(ValueError, match="--overwrite"):  # the leftovers are refused, not mixed into a new export
        export_shapes(ShapesDataConfig(out=str(out), n=10))


def test_an_image_size_over_the_maximum_is_refused_before_anything_is_written(tmp_path):
    from reasonrl.vision.world.shapes import MAX_SIDE as MAX_IMAGE_SIZE

    with pytest.raises(ValueError, match=rf"--image-size\b.*at most {MAX_IMAGE_SIZE}"):
        export_shapes(ShapesDataConfig(out=str(tmp_path / "d"), n=1, image_size=MAX_IMAGE_SIZE + 1))
    assert not (tmp_path / "d").exists()


def test_data_shapes_takes_overwrite(tmp_path, capsys):
    from reasonrl.cli import main

    args = ["data", "shapes", "--n", "2", "--out", str(tmp_path / "d")]
    assert main(args) == 0 and main(args) == 2 and "--overwrite" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0
