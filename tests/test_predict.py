"""`python -m pnoc_jax.predict` on a real photograph of an arbitrary size, a folder, a rotated
JPEG and files that are not images."""

import dataclasses
import os
import shutil
import struct
import subprocess
import sys
import zlib

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import pytest
from PIL import Image

from pnoc_jax import predict
from pnoc_jax.core import fileio, weights
from pnoc_jax.core.errors import UserError
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


def _png_claiming(path: str, width: int, height: int) -> None:
    """A PNG whose header claims width x height (no pixel data: PIL refuses it on opening)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))


def test_16_bit_and_palette_pngs_read_and_too_large_images_skipped(checkpoint, tmp_path):
    grey16 = (np.arange(40 * 30, dtype=np.uint16).reshape(30, 40) * 54).astype(np.uint16)
    Image.fromarray(grey16).save(tmp_path / "deep.png")
    read = predict.read_image(str(tmp_path / "deep.png"))
    assert read.shape == (30, 40, 3) and read.dtype == np.uint8
    np.testing.assert_array_equal(read[..., 0], np.round(grey16 / 257.0).astype(np.uint8))
    indices = np.arange(30 * 40, dtype=np.uint8).reshape(30, 40) % 4
    palette = Image.fromarray(indices, mode="P")
    palette.putpalette([0, 0, 0, 200, 10, 10, 10, 200, 10, 10, 10, 200])
    palette.save(tmp_path / "palette.png")
    colours = np.array([[0, 0, 0], [200, 10, 10], [10, 200, 10], [10, 10, 200]], np.uint8)
    np.testing.assert_array_equal(
        predict.read_image(str(tmp_path / "palette.png")), colours[indices]
    )
    _png_claiming(str(tmp_path / "huge.png"), 20000, 20000)
    files = [str(tmp_path / n) for n in ("huge.png", "deep.png", "palette.png")]
    written, problems = predict.segment_images(
        files, str(tmp_path / "out"), checkpoint,
        os.path.join(os.path.dirname(checkpoint), "model.json"),
        scales=[1.0], flip=False, crf_iterations=0, max_side=64, batch=2,
    )  # fmt: skip
    assert [os.path.basename(w) for w in written] == ["deep.png", "palette.png"]
    assert len(problems) == 1 and problems[0].startswith(f"{files[0]}: too large to decode (")


def test_weights_of_another_network_are_one_line(checkpoint, tmp_path):
    folder = tmp_path / "oc"
    folder.mkdir()
    other = seg_model.ModelSpec(*dataclasses.astuple(SPEC)[:2], 3, *dataclasses.astuple(SPEC)[3:])
    variables = other.build().init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
    weights.save(jax.device_get(variables), str(folder / "f.npz"))
    shutil.copy(os.path.join(os.path.dirname(checkpoint), "model.json"), folder)
    with pytest.raises(weights.WeightsError, match=r"f.npz: not the weights of a deeplabv3plus"):
        seg_model.load_predictor(SPEC, str(folder / "f.npz"))


def test_out_must_not_be_a_file_or_hold_the_inputs(images, tmp_path):
    predict.check_out(str(tmp_path / "new"), [images["photo"]])
    with pytest.raises(UserError, match=r"holds input images \(hopper.jpg and 1 more\)"):
        predict.check_out(images["folder"], [images["photo"], images["small"]])
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match="is a file; give a folder"):
        predict.check_out(str(tmp_path / "file"), [images["photo"]])
    files, problems = predict.collect([os.path.join(images["folder"], "hopper.*"), "/no/*.png"])
    assert [os.path.basename(f) for f in files] == ["hopper.jpg", "hopper.png"]
    assert problems == ["/no/*.png: no file matches"]


def _predict(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.path.abspath(ROOT)}
    command = [sys.executable, "-m", "pnoc_jax.predict", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)


def test_command_line(checkpoint, images, tmp_path):
    """The shell's forms: --images a b folder/ (a name with a comma too), one line per skip."""
    out = str(tmp_path / "cli")
    comma = str(tmp_path / "a,b.png")
    shutil.copy(images["small"], comma)
    options = ["--scales=1.0", "--noflip", "--crf_iterations=0"]
    done = _predict(
        f"--checkpoint={checkpoint}", "--images", images["photo"], images["garbage"], comma,
        f"--out={out}", *options,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr[-2000:]  # one image could not be read
    assert [line for line in done.stderr.splitlines() if "predict.py" not in line] == [
        f"pnoc_jax.predict: skipped {images['garbage']}: not an image format PIL can read"
    ]  # besides its log lines: no backend probing line, no traceback
    assert "segmented 2 image(s)" in done.stdout
    assert fileio.read_png(os.path.join(out, "hopper.png")).shape == (509, 463)
    assert fileio.read_png(os.path.join(out, "a,b.png")).shape == (97, 131)
    missing = _predict(
        f"--checkpoint={tmp_path}/none.npz", "--images", images["photo"], f"--out={out}"
    )
    assert missing.returncode == 1 and "none.npz: no such weights file" in missing.stderr
    before = fileio.read_bytes(images["small"])
    onto = _predict(
        f"--checkpoint={checkpoint}", "--images", images["small"], f"--out={images['folder']}"
    )
    assert onto.returncode == 2 and len(onto.stderr.splitlines()) == 1, onto.stderr
    assert "holds input images (hopper.png)" in onto.stderr
    assert fileio.read_bytes(images["small"]) == before
