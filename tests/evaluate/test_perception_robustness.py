"""PerceptionCLIP's two steps and the patch corruptions, on hand-made tensors and the tiny model."""

from __future__ import annotations

import pytest
import torch

from tasks.evaluate.params import RobustnessParams
from tasks.evaluate.perception import attribute_combos, conditioned_templates, infer_and_classify
from tasks.evaluate.robustness import corrupt, paste, patch_mask


def test_conditioned_templates_and_combos():
    assert conditioned_templates(["a photo of a {c}."], ("on grass", "a drawing")) == [
        "a photo of a {c}, on grass, a drawing."
    ]
    assert attribute_combos({"bg": ["a", "b"], "style": ["x", "y", "z"]})[:2] == [
        ("a", "x"),
        ("a", "y"),
    ]
    with pytest.raises(ValueError, match="at least one value"):
        attribute_combos({"bg": []})


def test_infer_attribute_then_classify_under_it():
    # one image, 2 attribute values z, 2 classes. Plain zero-shot (max over everything) says class 0
    # through z=1's single spike, but the attribute evidence (summed over classes) favours z=0,
    # under which class 1 wins.
    scores = torch.tensor([[[3.0, 3.2], [0.0, 3.5]]])  # (N=1, Z=2, C=2)
    z, pred = infer_and_classify(scores)
    assert z.tolist() == [0] and pred.tolist() == [1]


def test_patch_mask_covers_the_requested_share():
    gen = torch.Generator().manual_seed(0)
    mask = patch_mask(3, 32, 4, 0.25, gen)
    assert mask.shape == (3, 1, 32, 32)
    assert torch.allclose(mask.float().mean(dim=(1, 2, 3)), torch.full((3,), 0.25))


def test_corruptions_touch_only_masked_pixels():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 16, 16, generator=gen)
    mask = patch_mask(2, 16, 2, 0.5, gen)
    p = RobustnessParams()
    for kind in ("noise", "blur", "occlusion"):
        y = corrupt(x, kind, mask, p, gen)
        assert torch.equal(y[~mask.expand_as(x)], x[~mask.expand_as(x)]), kind
        assert not torch.equal(y, x), kind
    assert torch.all(corrupt(x, "occlusion", torch.ones_like(mask), p, gen) == 0.5)


def test_paste_puts_the_whole_patch_in():
    gen = torch.Generator().manual_seed(0)
    x = torch.zeros(4, 3, 20, 20)
    out = paste(x, torch.ones(3, 5, 5), gen)
    assert torch.equal(out.sum(dim=(1, 2, 3)), torch.full((4,), 75.0))


def test_robustness_and_perception_on_tiny_model(tiny_model, eval_root):
    from tasks.evaluate import perception, robustness
    from tasks.evaluate.datasets import load_set
    from tasks.evaluate.features import Embedder
    from tasks.evaluate.loading import load_model
    from tasks.evaluate.params import EmbedParams, PerceptionParams

    emb = Embedder(load_model(str(tiny_model)), EmbedParams(batch_size=8), None)
    s = load_set("colours", eval_root, eval_root)
    r = robustness.evaluate(emb, s, RobustnessParams(max_samples=12, fractions=[1.0], adv_steps=3))
    assert {
        "clean_acc1",
        "noise_1_acc1",
        "blur_1_acc1",
        "occlusion_1_acc1",
        "adv_patch_acc1",
    } <= set(r)
    # every patch occluded: every image is the same grey, so one class is predicted for all 12
    # images (classes 0-2, four each): accuracy is 0 or exactly 4/12
    assert r["occlusion_1_acc1"] in (0.0, pytest.approx(4 / 12))
    assert all(q.requires_grad for q in emb.loaded.model.parameters()), "flags put back"
    img = emb.images(s.images)
    out = perception.evaluate(
        emb.text_encoder(), s, img, PerceptionParams(max_templates=1), zeroshot_acc1=0.5
    )
    assert out["delta_acc1"] == pytest.approx(out["acc1"] - 0.5)
    assert sum(out["inferred"]["style"].values()) == pytest.approx(1.0)


def test_clean_accuracy_is_the_zero_shot_accuracy_of_the_same_images(tiny_model, eval_root):
    """Robustness takes its clean accuracy from the embeddings the zero-shot task used (no
    second pass): it must equal zero-shot top-1 over the same first images, computed apart."""
    import torch

    from tasks.evaluate import robustness, zeroshot
    from tasks.evaluate.datasets import load_set
    from tasks.evaluate.embed import encode_images_local, encode_texts
    from tasks.evaluate.features import Embedder
    from tasks.evaluate.loading import load_model
    from tasks.evaluate.params import EmbedParams

    loaded = load_model(str(tiny_model))
    s = load_set("colours", eval_root, eval_root)
    n = 10
    w = zeroshot.zeroshot_classifier(
        lambda t: encode_texts(loaded.model, loaded.tokenizer, t), s.classnames, s.templates
    )
    img = encode_images_local(loaded.model, loaded.preprocess, s.images[:n], 8)
    expected = zeroshot.classification_metrics(
        zeroshot.logits(img, w), torch.as_tensor(s.labels[:n]), len(s.classnames)
    )["acc1"]
    emb = Embedder(loaded, EmbedParams(batch_size=8), None)
    r = robustness.evaluate(
        emb, s, RobustnessParams(max_samples=n, fractions=[0.5], adversarial=False)
    )
    assert r["clean_acc1"] == pytest.approx(expected)
