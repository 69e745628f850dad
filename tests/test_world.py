import numpy as np
import pytest

from tutorial_ldm import world


def test_scenes_are_deterministic_from_the_seed():
    assert world.sample_scenes(20, seed=7) == world.sample_scenes(20, seed=7)
    assert world.sample_scenes(20, seed=7) != world.sample_scenes(20, seed=8)


def test_caption_round_trips_through_parse_caption():
    for scene in world.sample_scenes(200, seed=0):
        parsed = world.parse_caption(scene.caption)
        assert (parsed.shape, parsed.colour, parsed.position, parsed.size, parsed.background) == (
            scene.shape, scene.colour, scene.position, scene.size, scene.background)


def test_prompts_are_case_insensitive_and_tolerate_spaces():
    assert world.parse_caption("  A  Large RED circle   on the LEFT ") == world.Scene(
        "circle", "red", "on the left", "large")


def test_background_is_never_the_shapes_colour():
    scenes = world.sample_scenes(2000, seed=1)
    assert all(s.background != s.colour for s in scenes)
    assert {s.background for s in scenes} == set(world.BACKGROUNDS)


def test_render_draws_the_shape_in_its_colour_on_its_background():
    scene = world.Scene("square", "blue", "in the center", "large", "yellow")
    img = world.render(scene)
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8
    assert tuple(img[32, 32]) == world.COLOURS["blue"]
    assert tuple(img[2, 2]) == world.BACKGROUNDS["yellow"]


def test_triangle_points_up():
    img = world.render(world.Scene("triangle", "red", "in the center", "large")).astype(int)
    red_per_row = (np.abs(img - world.COLOURS["red"]).sum(-1) < 30).sum(1)
    rows = np.nonzero(red_per_row)[0]
    assert red_per_row[rows[0]] < red_per_row[rows[-1]]


def test_render_batch_is_in_vae_range():
    x = world.render_batch(world.sample_scenes(4, seed=0))
    assert x.shape == (4, 3, 64, 64) and x.min() >= -1 and x.max() <= 1


def test_bad_caption_names_what_is_allowed():
    with pytest.raises(ValueError, match="a \\[small\\|large\\]"):
        world.parse_caption("a pink hexagon")
