"""Session fixtures that build the tiny models once and share their folders between tests."""

import pytest


@pytest.fixture(scope="session")
def tiny_sd_path(tmp_path_factory):
    """Folder of the tiny Stable Diffusion pipeline, saved in Hub layout."""
    from spqr_runners.tiny import build_tiny_pipeline

    return build_tiny_pipeline(tmp_path_factory.mktemp("tiny-sd") / "model")


@pytest.fixture(scope="session")
def tiny_clip_path(tmp_path_factory):
    """Folder of the tiny CLIP model and processor, saved in Hub layout."""
    from spqr_runners.tiny import build_tiny_clip

    return build_tiny_clip(tmp_path_factory.mktemp("tiny-clip") / "model")


@pytest.fixture()
def tiny_pipeline(tiny_sd_path):
    """A freshly loaded tiny pipeline (float32, CPU), loaded through ``DiffusionPipeline.from_pretrained``."""
    from diffusers import DiffusionPipeline

    pipeline = DiffusionPipeline.from_pretrained(tiny_sd_path, safety_checker=None, requires_safety_checker=False)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline
