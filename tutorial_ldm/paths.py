"""Where things are: the course folder, the shipped model, the checkpoint folder (one home).

Everything is found from this file's place, whatever the working directory (notebooks run in
notebooks/, benchmarks from anywhere).
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent  # the top of the course folder
ASSETS = REPO_ROOT / "assets"
SHIPPED_MODEL = ASSETS / "tiny-ldm"  # the tiny model trained by this project
MODELS_DIR_ENV = "TUTORIAL_LDM_MODELS_DIR"  # set it to use another checkpoint folder
DEFAULT_MODELS_DIR = REPO_ROOT / "models" / "Stable-diffusion"  # A1111's place for checkpoints


def models_dir(folder: str | os.PathLike | None = None) -> Path:
    """The checkpoint folder: `folder`, else $TUTORIAL_LDM_MODELS_DIR, else models/Stable-diffusion
    at the top of the course folder."""
    if folder is not None:
        return Path(folder).expanduser()
    return Path(os.environ.get(MODELS_DIR_ENV) or DEFAULT_MODELS_DIR).expanduser()
