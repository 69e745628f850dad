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


# ----------------------------------------------------------------------------- Chinese captions


def test_chinese_caption_is_the_canonical_form():
    scene = world.Scene("square", "blue", "on the left", "large", "yellow")
    assert scene.caption_zh == "左边有一个大的蓝色的正方形，黄色背景"
    assert world.Scene("circle", "red", "in the center").caption_zh == "中间有一个红色的圆形"


def test_chinese_captions_round_trip_and_use_every_form():
    scenes = world.sample_scenes(500, seed=0)
    variants = world.chinese_captions([s.caption for s in scenes], seed=0)
    assert variants == world.chinese_captions([s.caption for s in scenes], seed=0)
    for scene, caption in zip(scenes, variants):
        assert world.parse_caption(scene.caption_zh) == world.parse_caption(caption) == world.Scene(
            scene.shape, scene.colour, scene.position, scene.size, scene.background)
    joined = "".join(variants)
    for word in ("在", "方形", "正方形", "左侧", "右侧", "上面", "下面", "，", "背景", "大的", "小的"):
        assert word in joined, word
    assert any("大红色" in c or "小红色" in c for c in variants)  # "的" left out after the size
    assert any(c.startswith("在") for c in variants) and any(not c.startswith("在") for c in variants)


def test_chinese_parse_tolerates_spaces_ascii_comma_and_optional_de():
    assert world.parse_caption(" 在 左侧 有一个 小 紫色 方形 , 黑色的背景 ") == world.Scene(
        "square", "purple", "on the left", "small", "black")
    assert world.parse_caption("下面有一个绿色三角形") == world.Scene("triangle", "green", "at the bottom")


def test_bad_chinese_caption_names_the_form():
    with pytest.raises(ValueError, match="有一个"):
        world.parse_caption("一只粉色的六边形")


def test_chinese_words_come_after_the_english_ones():
    english = world.vocabulary()
    both = world.vocabulary(("en", "zh"))
    assert both[: len(english)] == english  # the English ids do not move
    for word in ("红色", "橙色", "黄色", "绿色", "蓝色", "紫色", "白色", "黑色", "圆形", "正方形",
                 "三角形", "左边", "右边", "上边", "下边", "中间", "大", "小", "上面", "下面",
                 "左侧", "右侧", "方形"):
        assert word in both[len(english):], word


def test_benchmark_prompts_in_chinese_describe_the_same_scenes():
    from tutorial_ldm import metrics

    english, chinese = metrics.benchmark_prompts(), metrics.benchmark_prompts(language="zh")
    assert len(chinese) == len(english) == 180
    assert [world.parse_caption(c) for c in chinese] == [world.parse_caption(e) for e in english]
    with pytest.raises(ValueError, match="'en' or 'zh'"):
        metrics.benchmark_prompts(language="fr")
