"""Images larger than the fixed canvas: one user error naming them and the key to raise."""

import numpy as np
import pytest

from pnoc_jax.core.errors import UserError
from pnoc_jax.inference import tta


def _example(image_id: str, h: int, w: int) -> dict:
    return {"id": image_id, "image": np.zeros((h, w, 3), np.uint8)}


def test_images_on_the_canvas_pass():
    tta.check_fits([_example("a", 64, 48), _example("b", 10, 64)], 64, "rw.max_image_size")


def test_larger_images_are_named_with_the_key():
    examples = [_example("a", 64, 48), _example("big", 65, 10), _example("wide", 3, 100)]
    with pytest.raises(UserError) as err:
        tta.check_fits(examples, 64, "rw.max_image_size")
    assert str(err.value) == (
        "images big (65x10), wide (3x100) are larger than config.rw.max_image_size=64; raise it"
    )
