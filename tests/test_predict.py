"""`python -m pnoc_jax.predict` on a real photograph of an arbitrary size, a folder, a rotated
JPEG and files that are not images."""

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
from pnoc_jax.models.classifier import CAMClassifier
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


def _odd_pngs(folder) -> None:
    """In `folder`: a 16-bit greyscale PNG and a palette PNG, each with its 8-bit RGB twin
    (what it must read as), and a PNG whose header claims 20000 x 20000."""
    folder.mkdir()
    grey16 = (np.arange(40 * 30, dtype=np.uint16).reshape(30, 40) * 54).astype(np.uint16)
    Image.fromarray(grey16).save(folder / "deep.png")
    grey8 = np.round(grey16 / 257.0).astype(np.uint8)
    Image.fromarray(np.repeat(grey8[..., None], 3, -1)).save(folder / "deep_as_rgb.png")
    indices = np.arange(30 * 40, dtype=np.uint8).reshape(30, 40) % 4
    palette = Image.fromarray(indices, mode="P")
    palette.putpalette([0, 0, 0, 200, 10, 10, 10, 200, 10, 10, 10, 200])
    palette.save(folder / "palette.png")
    colours = np.array([[0, 0, 0], [200, 10, 10], [10, 200, 10], [10, 10, 200]], np.uint8)
    Image.fromarray(colours[indices]).save(folder / "palette_as_rgb.png")
    _png_claiming(str(folder / "huge.png"), 20000, 20000)


def test_16_bit_and_palette_pngs_read_as_their_8_bit_rgb(tmp_path):
    _odd_pngs(tmp_path / "odd")
    for name in ("deep", "palette"):
        read = predict.read_image(str(tmp_path / "odd" / f"{name}.png"))
        assert read.shape == (30, 40, 3) and read.dtype == np.uint8
        twin = np.asarray(Image.open(tmp_path / "odd" / f"{name}_as_rgb.png"))
        np.testing.assert_array_equal(read, twin)


def test_out_must_not_hold_the_inputs_and_quoted_globs(images, tmp_path):
    predict.check_out(str(tmp_path / "new"), [images["photo"]])
    with pytest.raises(UserError, match=r"holds input images \(hopper.jpg and 1 more\)"):
        predict.check_out(images["folder"], [images["photo"], images["small"]])
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


def test_odd_images_a_file_beside_a_folder_and_wrong_inputs(checkpoint, images, tmp_path):
    """One call: a file and a folder of a 16-bit PNG, a palette PNG (each segmented as its
    8-bit RGB twin) and a PNG too large to decode (one "skipped" line, the others still done).
    Then an --out that is a file, and a classifier's weights beside a model.json: one line
    each, naming it."""
    _odd_pngs(tmp_path / "odd")
    out = tmp_path / "out"
    done = _predict(
        f"--checkpoint={checkpoint}", "--images", images["small"], str(tmp_path / "odd"),
        f"--out={out}", "--scales=1.0", "--noflip", "--crf_iterations=0", "--max_side=64",
    )  # fmt: skip
    assert done.returncode == 1, done.stderr[-2000:]
    skipped = [line for line in done.stderr.splitlines() if "predict.py" not in line]
    assert len(skipped) == 1, done.stderr  # besides its log lines: no traceback
    huge = tmp_path / "odd" / "huge.png"
    assert skipped[0].startswith(f"pnoc_jax.predict: skipped {huge}: too large to decode (")
    assert "segmented 5 image(s)" in done.stdout and "1 skipped" in done.stdout
    assert fileio.read_png(str(out / "hopper.png")).shape == (97, 131)
    for name in ("deep", "palette"):
        mask = fileio.read_png(str(out / f"{name}.png"))
        assert mask.shape == (30, 40)
        np.testing.assert_array_equal(mask, fileio.read_png(str(out / f"{name}_as_rgb.png")))
    assert not (out / "huge.png").exists()

    (tmp_path / "file").write_text("mine")
    onto_file = _predict(
        f"--checkpoint={checkpoint}", "--images", images["small"], f"--out={tmp_path}/file"
    )
    assert onto_file.returncode == 2 and len(onto_file.stderr.splitlines()) == 1, onto_file.stderr
    assert f"--out {tmp_path}/file is a file; give a folder" in onto_file.stderr
    assert (tmp_path / "file").read_text() == "mine"

    oc = tmp_path / "oc"
    oc.mkdir()
    classifier = CAMClassifier(SPEC.backbone, SPEC.num_classes - 1)
    variables = classifier.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
    weights.save(jax.device_get(variables), str(oc / "f.npz"))
    shutil.copy(os.path.join(os.path.dirname(checkpoint), "model.json"), oc)
    other = _predict(f"--checkpoint={oc}/f.npz", "--images", images["small"], f"--out={out}2")
    assert other.returncode == 1, other.stderr[-2000:]
    errors = [line for line in other.stderr.splitlines() if "predict.py" not in line]
    assert len(errors) == 1 and "Traceback" not in other.stderr, other.stderr
    assert errors[0].startswith("pnoc_jax.predict: error: ")
    assert f"{oc}/f.npz: not the weights of a deeplabv3plus" in errors[0]
