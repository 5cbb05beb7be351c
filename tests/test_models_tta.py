from __future__ import annotations

import torch

from tbclf.models import SimpleCNNClassifier
from tbclf.models.tta import DEFAULT_VIEWS, tta_probs, view


def small_cnn() -> SimpleCNNClassifier:
    torch.manual_seed(0)
    model = SimpleCNNClassifier(channels=[8, 16], kernel_sizes=[3, 3], head=[16], image_size=32)
    return model.eval()


def test_tta_of_an_invariant_input_equals_no_tta():
    # A constant image looks the same in every view (borders are replicated).
    model = small_cnn()
    images = torch.full((3, 1, 32, 32), 0.4)
    images[1] = 0.9
    plain = torch.sigmoid(model(images))
    assert torch.allclose(tta_probs(model, images), plain, atol=1e-6)


def test_tta_of_a_model_blind_to_the_views_equals_no_tta():
    class MeanModel(torch.nn.Module):  # logit from the image mean: unchanged by border shifts
        def forward(self, x):
            return x.mean(dim=(1, 2, 3)) * 0 + x[:, 0, 0, 0] * 0 + 1.5

    images = torch.rand(4, 1, 32, 32)
    expected = torch.sigmoid(torch.full((4,), 1.5))
    assert torch.allclose(tta_probs(MeanModel(), images), expected)


def test_tta_averages_the_views_and_differs_on_structured_images():
    model = small_cnn()
    g = torch.Generator().manual_seed(1)
    images = torch.rand(2, 1, 32, 32, generator=g)
    expected = torch.stack([torch.sigmoid(model(view(images, *v))) for v in DEFAULT_VIEWS]).mean(0)
    got = tta_probs(model, images)
    assert torch.allclose(got, expected)
    assert not torch.allclose(got, torch.sigmoid(model(images)), atol=1e-7)


def test_views_are_deterministic_and_identity_is_the_input():
    images = torch.rand(2, 1, 16, 16)
    assert view(images, 1.0, 0.0, 0.0) is images
    a, b = view(images, 0.95, 0.06, 0.0), view(images, 0.95, 0.06, 0.0)
    assert torch.equal(a, b) and a.shape == images.shape
    # A shift moves content: the right part of a left-shifted view is the image's right part.
    ramp = torch.linspace(0, 1, 16).expand(1, 1, 16, 16).contiguous()
    shifted = view(ramp, 1.0, 0.25, 0.0)
    assert shifted[0, 0, 0, 4] > ramp[0, 0, 0, 4]


def test_view_samples_the_grid_affine_grid_gives():
    import torch.nn.functional as F

    images = torch.rand(3, 1, 24, 20, generator=torch.Generator().manual_seed(2))
    for scale, dx, dy in DEFAULT_VIEWS[1:] + ((0.9, -0.1, 0.05),):
        theta = torch.tensor([[scale, 0.0, dx], [0.0, scale, dy]]).expand(3, 2, 3)
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        expected = F.grid_sample(
            images, grid, mode="bilinear", padding_mode="border", align_corners=False
        )
        assert torch.allclose(view(images, scale, dx, dy), expected, atol=1e-6)
