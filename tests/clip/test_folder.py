"""A trained-format model folder loads through open_clip's own `local-dir:` schema, offline.

That is how CLIP_benchmark users load a folder (`clip_benchmark eval --model local-dir:<folder>`):
the teacher's LiT architecture (timm trunk + HF MiniLM text tower) must build with no hub and no
hub cache, and give what `load_clip` gives: the same tokens, pixels and features.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tasks.clip import build_model, load_clip, read_folder_config
from tasks.clip.folder import HUB_IDS_KEY, folder_config
from tasks.train.checkpoints import export_model_folder

TEXTS = ["a red circle", "a blue square on a white background"]
HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"

# runs in a fresh process with an empty hub cache and the hub switched off: a user's offline machine
OPEN_CLIP_SIDE = """
import json, sys
import numpy as np, torch, open_clip
from PIL import Image
folder, image, out = sys.argv[1:4]
model, _, preprocess = open_clip.create_model_and_transforms("local-dir:" + folder)
tokenizer = open_clip.get_tokenizer("local-dir:" + folder)
model.eval()
pixels = preprocess(Image.open(image)).unsqueeze(0)
tokens = tokenizer(json.loads(sys.argv[4]))
with torch.no_grad():
    np.savez(out, pixels=pixels.numpy(), tokens=tokens.numpy(),
             image=model.encode_image(pixels).numpy(), text=model.encode_text(tokens).numpy())
"""


@pytest.fixture(scope="module")
def lit_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The teacher's architecture, exported by the train stage's own writer (small image size)."""
    torch.manual_seed(0)
    built = build_model("clipmill-lit-mnv2-minilm", image_size=64)
    out = tmp_path_factory.mktemp("models") / "teacher"
    return export_model_folder(out, built, "model: clipmill-lit-mnv2-minilm\n", step=1)


def test_trained_folder_loads_through_open_clip_local_dir_offline(
    lit_folder: Path, tmp_path: Path
) -> None:
    image = tmp_path / "img.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (90, 70, 3), dtype=np.uint8)).save(image)
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "empty_hf_home"),  # no cached hub files to fall back on
    }
    env.pop("HF_HUB_CACHE", None)
    env.pop("TRANSFORMERS_CACHE", None)
    out = tmp_path / "open_clip.npz"
    proc = subprocess.run(
        [sys.executable, "-c", OPEN_CLIP_SIDE, str(lit_folder), str(image), str(out)]
        + [json.dumps(TEXTS)],
        env=env,
        cwd=tmp_path,  # not the folder, not the project: nothing relative may help
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    theirs = np.load(out)

    model, preprocess, tokenizer = load_clip(lit_folder)
    pixels = preprocess(Image.open(image)).unsqueeze(0)
    tokens = tokenizer(TEXTS)
    np.testing.assert_array_equal(theirs["pixels"], pixels.numpy())
    np.testing.assert_array_equal(theirs["tokens"], tokens.numpy())
    with torch.no_grad():
        np.testing.assert_allclose(theirs["image"], model.encode_image(pixels).numpy(), atol=1e-5)
        np.testing.assert_allclose(theirs["text"], model.encode_text(tokens).numpy(), atol=1e-5)


def test_folder_config_keeps_the_hub_id_for_this_library(lit_folder: Path) -> None:
    raw = json.loads((lit_folder / "open_clip_config.json").read_text())
    assert raw["model_cfg"]["text_cfg"]["hf_model_name"] == str(lit_folder.resolve())
    assert raw[HUB_IDS_KEY] == {"hf_model_name": HUB_ID}
    assert raw["model_cfg"]["text_cfg"]["hf_tokenizer_name"] == HUB_ID
    assert read_folder_config(lit_folder)["model_cfg"]["text_cfg"]["hf_model_name"] == HUB_ID


def test_folder_config_leaves_configs_without_hf_files_alone(tmp_path: Path) -> None:
    cfg = {"embed_dim": 8, "text_cfg": {"hf_model_name": HUB_ID}, "vision_cfg": {}}
    config = folder_config("m", cfg, {}, tmp_path, hf_files_in_folder=False)
    assert config["model_cfg"]["text_cfg"]["hf_model_name"] == HUB_ID
    assert HUB_IDS_KEY not in config
    moved = folder_config("m", cfg, {}, tmp_path / "x", hf_files_in_folder=True)
    assert cfg["text_cfg"]["hf_model_name"] == HUB_ID  # the caller's config is not mutated
    assert moved["model_cfg"]["text_cfg"]["hf_model_name"] == str((tmp_path / "x").resolve())
