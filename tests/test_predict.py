"""`python -m pnoc_jax.predict` on a real photograph of an arbitrary size, a folder, a rotated
JPEG and files that are not images."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import matplotlib
import pytest
from PIL import Image

from pnoc_jax import predict
from pnoc_jax.core import fileio, weights
from pnoc_jax.segmentation import model as seg_model

ROOT = os.path.join(os.path.dirname(__file__), "..")
PHOTO = os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg")
SPEC = seg_model.ModelSpec(
    "deeplabv3plus", "tiny", 7, 16, (1, 2, 3), 8, 4, ("background", *"abcdef"), "synthetic"
)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    """A (random) trained network as train_segmentation leaves it: best.npz + model.json."""
    folder = tmp_path_factory.mktemp("weights")
    variables = SPEC.build().init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
    weights.save(jax.device_get(variables), str(folder / "best.npz"))
    fileio.write_json(str(folder / "model.json"), SPEC.to_json())
    return str(folder / "best.npz")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("images")
    photo = Image.open(PHOTO).convert("RGB")
    paths = {}
    paths["photo"] = str(folder / "hopper.jpg")  # 463 x 509: not a multiple of 8
    photo.crop((3, 17, 3 + 463, 17 + 509)).save(paths["photo"], quality=92)
    paths["small"] = str(folder / "hopper.png")  # same stem, another format
    photo.resize((131, 97)).save(paths["small"])
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to view"
    paths["rotated"] = str(folder / "rotated.jpg")
    photo.crop((0, 0, 300, 201)).save(paths["rotated"], exif=exif.tobytes())
    paths["broken"] = str(folder / "broken.jpg")
    with open(paths["broken"], "wb") as f:
        f.write(b"\xff\xd8\xff\xe0 not really a jpeg")
    paths["garbage"] = str(folder / "garbage.png")
    with open(paths["garbage"], "wb") as f:
        f.write(b"plain text with a .png name")
    with open(folder / "notes.txt", "w") as f:
        f.write("not an image\n")
    paths["folder"] = str(folder)
    return paths


def test_collect_and_output_names(images):
    files, problems = predict.collect([images["folder"], "/no/such/file.png"])
    names = sorted(os.path.basename(f) for f in files)
    assert names == ["broken.jpg", "garbage.png", "hopper.jpg", "hopper.png", "rotated.jpg"]
    assert problems == ["/no/such/file.png: no such file or folder"]
    assert predict.output_names(["a/x.jpg", "b/x.png", "c/y.jpg", "c/y.jpg"]) == [
        "x_jpg", "x_png", "y", "y_2",
    ]  # fmt: skip


def test_masks_at_the_original_size_and_bad_files_reported(checkpoint, images, tmp_path):
    out = str(tmp_path / "out")
    files = [
        images["photo"],
        images["small"],
        images["rotated"],
        images["broken"],
        images["garbage"],
    ]
    written, problems = predict.segment_images(
        files,
        out,
        checkpoint,
        os.path.join(os.path.dirname(checkpoint), "model.json"),
        scales=[1.0, 0.5],
        flip=True,
        crf_iterations=2,
        max_side=256,  # the photo is shrunk for the network, its mask is not
        batch=2,
    )
    assert problems == [
        f"{images['broken']}: unreadable image (Truncated File Read)",  # a JPEG header only
        f"{images['garbage']}: not an image format PIL can read",
    ]
    sizes = {"hopper_jpg": (509, 463), "hopper_png": (97, 131), "rotated": (300, 201)}
    assert sorted(os.path.basename(w) for w in written) == sorted(f"{n}.png" for n in sizes)
    for name, size in sizes.items():
        with Image.open(os.path.join(out, f"{name}.png")) as mask:
            assert mask.mode == "P" and mask.size[::-1] == size
        label = fileio.read_png(os.path.join(out, f"{name}.png"))
        assert label.max() < SPEC.num_classes
        with Image.open(os.path.join(out, f"{name}_overlay.jpg")) as overlay:
            assert overlay.size[::-1] == size
    with open(os.path.join(out, "classes.txt")) as f:
        assert f.readline() == "0\tbackground\n"


def test_command_line(checkpoint, images, tmp_path):
    out = str(tmp_path / "cli")
    command = [
        sys.executable, "-m", "pnoc_jax.predict", f"--checkpoint={checkpoint}",
        f"--images={images['photo']},{images['garbage']}", f"--out={out}",
        "--scales=1.0", "--noflip", "--crf_iterations=0",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.path.abspath(ROOT)}
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert done.returncode == 1, done.stderr[-2000:]  # one image could not be read
    assert "skipped" in done.stderr and "garbage.png: not an image format" in done.stderr
    assert "segmented 1 image(s)" in done.stdout
    assert fileio.read_png(os.path.join(out, "hopper.png")).shape == (509, 463)
    missing = subprocess.run(
        [*command[:3], f"--checkpoint={tmp_path}/none.npz", *command[4:]],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=600,
    )  # fmt: skip
    assert missing.returncode == 1 and "none.npz: no such weights file" in missing.stderr
