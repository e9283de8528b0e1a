"""What the dataset builders share: the example features and the TFDS plumbing.

Every builder writes examples `{"id", "image" (encoded), "mask" (single-channel index PNG),
"labels" (float32 multi-hot [C])}` as ArrayRecord; `datasets.DecodedSource` reads them back.
"""

import inspect
from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from tensorflow_datasets.core import utils as tfds_utils


class SegmentationBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A segmentation dataset with image-level labels; subclasses set the class attributes."""

    NUM_CLASSES: ClassVar[int]
    IMAGE_FORMAT: ClassVar[str] = "png"  # how "image" is encoded ("png" or "jpeg")
    DESCRIPTION: ClassVar[str] = ""
    HOMEPAGE: ClassVar[str | None] = None

    @tfds_utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        """The builder's own file (TFDS's lookup imports `importlib_resources`, not needed)."""
        return epath.Path(inspect.getfile(cls))

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=self.DESCRIPTION,
            features=tfds.features.FeaturesDict(
                {
                    "id": tfds.features.Text(),
                    "image": tfds.features.Image(
                        shape=(None, None, 3), encoding_format=self.IMAGE_FORMAT
                    ),
                    "mask": tfds.features.Image(shape=(None, None, 1), encoding_format="png"),
                    "labels": tfds.features.Tensor(shape=(self.NUM_CLASSES,), dtype=np.float32),
                }
            ),
            homepage=self.HOMEPAGE,
        )
