"""Dense multi-scale + flip inference (`inference.dense`) against closed forms and the network."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pnoc_jax.data import transforms
from pnoc_jax.inference import dense, predictor, tta
from pnoc_jax.models.deeplab import DeepLabV3Plus
from pnoc_jax.models.resize import resize_bilinear
from pnoc_jax.segmentation import model as seg_model


def _image(seed: int, h: int, w: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), np.uint8)


def _ramp_predict(batch):
    """Logits that are not flip-symmetric: channel k = x[..., k % 3] · (1 + column / 100),
    plus the valid mask as the last channel."""
    images, valid = batch
    columns = 1.0 + np.arange(images.shape[2], dtype=np.float32) / 100.0
    logits = images[..., [0, 1, 2, 0]] * columns[None, None, :, None]
    return np.concatenate([logits, valid[..., None].astype(np.float32)], axis=-1)


def test_flip_pair_is_summed_after_flipping_back():
    """x·(1 + c/100) + flip(flip(x)·(1 + c/100)) = x·(2 + (w − 1)/100) on the image's pixels."""
    image = _image(0, 37, 45)
    (out,) = dense.multiscale_logits([image], _ramp_predict, (1.0,), 64, 1, flip=True)
    x = transforms.normalize(image)[..., [0, 1, 2, 0]].transpose(2, 0, 1)
    np.testing.assert_allclose(out[:4], x * (2 + (45 - 1) / 100), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out[4], 2.0)  # valid on the image, in both views


def test_scales_are_resized_to_the_image_and_averaged():
    image = _image(1, 40, 30)
    (out,) = dense.multiscale_logits([image], _ramp_predict, (1.0, 0.5), 64, 1, flip=False)
    full = transforms.normalize(image)[..., [0, 1, 2, 0]] * (1 + np.arange(30) / 100)[:, None]
    half = transforms.normalize(tta.resize_image(image, 0.5))[..., [0, 1, 2, 0]]
    half = half * (1 + np.arange(15) / 100)[:, None]
    up = np.asarray(resize_bilinear(jnp.asarray(half[None]), (40, 30), align_corners=False))[0]
    expected = (full + up) / 2
    np.testing.assert_allclose(out[:4], expected.transpose(2, 0, 1), rtol=1e-4, atol=1e-4)


def test_batches_padded_to_the_device_multiple_keep_each_image_apart():
    images = [_image(2, 30, 50), _image(3, 61, 20), _image(4, 64, 64)]
    together = dense.multiscale_logits(images, _ramp_predict, (1.0, 1.5), 64, 8, flip=True)
    for image, out in zip(images, together, strict=True):
        (alone,) = dense.multiscale_logits([image], _ramp_predict, (1.0, 1.5), 64, 1, flip=True)
        assert out.shape == (5, *image.shape[:2])
        np.testing.assert_array_equal(out, alone)
    with pytest.raises(ValueError, match="does not fit"):
        dense.on_canvas([_image(5, 70, 10)], 64, 1, flip=False)


@pytest.mark.slow
def test_single_scale_without_flip_is_one_forward_pass():
    """An image that fills its canvas: the dense pipeline is the network's output itself."""
    model = DeepLabV3Plus("tiny", 5, 16, head_channels=8, low_level_channels=4)
    image = _image(6, 64, 64)
    x = transforms.normalize(image)[None]
    variables = jax.device_get(model.init(jax.random.key(0), jnp.asarray(x)))
    expected = np.asarray(model.apply(variables, jnp.asarray(x)))[0].transpose(2, 0, 1)
    predict, multiple = predictor.local_predictor(seg_model.inference_fn(model), variables)
    (out,) = dense.multiscale_logits([image], predict, (1.0,), 64, multiple, flip=False)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
