import numpy as np
import pytest

from tutorial_ldm import metrics, world


def test_analyzer_reads_the_worlds_own_images():
    scenes = world.sample_scenes(600, seed=123)
    scores = metrics.adherence([world.render(s) for s in scenes], [s.caption for s in scenes])
    for key in ("colour", "shape", "position", "background", "all3"):
        assert scores[key] >= 0.98, (key, scores)
    assert scores["size"] >= 0.95, scores


def test_analyzer_sees_nothing_on_a_blank_image():
    reading = metrics.analyze(np.full((64, 64, 3), 255, np.uint8))
    assert reading.shape is None and reading.background == "white"


def test_wrong_images_score_low():
    scenes = world.sample_scenes(100, seed=5)
    shuffled = [world.render(s) for s in scenes[1:] + scenes[:1]]
    scores = metrics.adherence(shuffled, [s.caption for s in scenes])
    assert scores["all3"] < 0.3


def test_benchmark_prompts_cover_every_colour_shape_and_position():
    prompts = metrics.benchmark_prompts()
    assert len(prompts) >= 100
    scenes = [world.parse_caption(p) for p in prompts]
    combos = {(s.colour, s.shape, s.position) for s in scenes}
    assert len(combos) == len(world.COLOURS) * len(world.SHAPES) * len(world.POSITIONS)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="64×64"):
        metrics.analyze(np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="one image per prompt"):
        metrics.adherence([np.zeros((64, 64, 3), np.uint8)], [])


def test_adherence_takes_a_numpy_batch():
    scenes = world.sample_scenes(8, seed=3)
    batch = np.stack([world.render(s) for s in scenes])  # (N, 64, 64, 3), as pipelines return
    assert metrics.adherence(batch, [s.caption for s in scenes])["all3"] == 1.0
