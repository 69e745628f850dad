"""Classifier-free guidance: our formula is the one the stock pipeline applies, the sweep keeps
the noise fixed across scales, and the negative prompt takes the empty prompt's place."""

import numpy as np
import pytest
import torch
from toy_models import toy_pipeline

from tutorial_ldm import guidance as G


@pytest.fixture(scope="module")
def pipe():
    return toy_pipeline()


def test_formula_is_what_the_pipeline_does(pipe, monkeypatch):
    unet_outputs, scheduler_inputs = [], []
    hook = pipe.unet.register_forward_hook(lambda m, a, out: unet_outputs.append(out[0]))
    real_step = pipe.scheduler.step

    def spy(model_output, *args, **kwargs):
        scheduler_inputs.append(model_output)
        return real_step(model_output, *args, **kwargs)

    monkeypatch.setattr(pipe.scheduler, "step", spy)
    try:
        pipe("a blue square at the top", num_inference_steps=2, guidance_scale=6.5,
             generator=torch.Generator().manual_seed(0), output_type="np")
    finally:
        hook.remove()
    assert len(unet_outputs) == len(scheduler_inputs) == 2
    for out, guided in zip(unet_outputs, scheduler_inputs):
        uncond, cond = out.chunk(2)  # the pipeline batches [unconditional, conditional]
        torch.testing.assert_close(G.classifier_free_guidance(uncond, cond, 6.5), guided)
        assert not torch.allclose(cond, guided)


def test_scale_one_is_the_conditional_model_and_zero_the_unconditional():
    uncond, cond = torch.randn(3), torch.randn(3)
    torch.testing.assert_close(G.classifier_free_guidance(uncond, cond, 1.0), cond)
    torch.testing.assert_close(G.classifier_free_guidance(uncond, cond, 0.0), uncond)


def test_sweep_is_deterministic_and_in_order(pipe):
    prompts = ["a red circle on the left", "a green triangle at the bottom"]
    rows = G.guidance_sweep(pipe, prompts, [1.0, 3.0, 1.0], steps=2)
    assert [r["scale"] for r in rows] == [1.0, 3.0, 1.0]
    for row in rows:
        assert len(row["images"]) == 2 and row["images"][0].shape == (64, 64, 3)
        assert row["images"][0].dtype == np.uint8
        assert {"colour", "shape", "position", "all3"} <= set(row) and 0 <= row["all3"] <= 1
    assert all(np.array_equal(a, b) for a, b in zip(rows[0]["images"], rows[2]["images"]))
    assert not np.array_equal(rows[0]["images"][0], rows[1]["images"][0])
    assert not np.array_equal(rows[0]["images"][0], rows[0]["images"][1])  # seed + i per prompt


def test_negative_prompt_replaces_the_empty_prompt(pipe):
    prompts = ["a purple square in the center"]
    default = G.generate_batch(pipe, prompts, 5.0, steps=2)
    empty = G.generate_batch(pipe, prompts, 5.0, steps=2, negative_prompt="")
    other = G.generate_batch(pipe, prompts, 5.0, steps=2, negative_prompt="red")
    assert np.array_equal(default[0], empty[0])
    assert not np.array_equal(default[0], other[0])


def stock_generate_batch(pipe, prompts, guidance_scale, seed=0, steps=20, negative_prompt=None):
    """generate_batch as it was: the stock pipeline with the pipeline's own scheduler."""
    generators = [torch.Generator().manual_seed(seed + i) for i in range(len(prompts))]
    negative = None if negative_prompt is None else [negative_prompt] * len(prompts)
    out = pipe(prompts, num_inference_steps=steps, guidance_scale=guidance_scale,
               negative_prompt=negative, generator=generators, output_type="np").images
    return list((out * 255).round().astype(np.uint8))


@pytest.mark.parametrize("scheduler", ["DDIMScheduler", "EulerAncestralDiscreteScheduler",
                                       "DPMSolverMultistepScheduler"])
@pytest.mark.parametrize("guidance, negative", [(5.0, None), (1.0, None), (4.0, "red")])
def test_generate_batch_gives_the_stock_pipelines_images(pipe, scheduler, guidance, negative):
    """Through generate_many with the sampler that equals the pipeline's scheduler: the same pixels."""
    import diffusers

    from tutorial_ldm.devices import cpu_threads_for
    from tutorial_ldm.generation import sampler_for

    prompts = ["a red circle on the left", "a green triangle at the bottom", "a blue square"]
    original = pipe.scheduler
    pipe.scheduler = getattr(diffusers, scheduler).from_config(original.config)
    try:
        ours = G.generate_batch(pipe, prompts, guidance, seed=3, steps=3, negative_prompt=negative)
        # the same arithmetic: as many CPU threads as ours uses (another count changes the last bits)
        with cpu_threads_for("cpu", None, pipe.unet):
            stock = stock_generate_batch(pipe, prompts, guidance, seed=3, steps=3, negative_prompt=negative)
        assert sampler_for(pipe.scheduler) in ("ddim", "euler_a", "dpmpp_2m")
    finally:
        pipe.scheduler = original
    assert all(np.array_equal(a, b) for a, b in zip(ours, stock))


def test_generate_batch_names_a_scheduler_we_do_not_reproduce(pipe):
    from diffusers import PNDMScheduler

    from tutorial_ldm.settings import SettingsError

    original = pipe.scheduler
    pipe.scheduler = PNDMScheduler.from_config(original.config)
    try:
        with pytest.raises(SettingsError, match=r"scheduler='PNDMScheduler' must be a scheduler one of our "
                                                r"samplers reproduces: .*DDIMScheduler"):
            G.generate_batch(pipe, ["a red circle"], 5.0, steps=2)
    finally:
        pipe.scheduler = original


def test_sweep_needs_prompts(pipe):
    with pytest.raises(ValueError, match="at least one prompt"):
        G.guidance_sweep(pipe, [], [1.0])
