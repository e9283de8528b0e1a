"""Where every trainer's backbone starts (`models.backbones.BackboneStart`): the source a config
chooses, "~" expanded, the stages it reads, its checks, and a file of another architecture."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from pnoc_jax import config_lib, pipeline
from pnoc_jax.cam import strategies
from pnoc_jax.cam import train as cam_train
from pnoc_jax.core import artifacts, weights
from pnoc_jax.models.backbones import BackboneStart, build_backbone
from pnoc_jax.saliency import train as saliency_train
from pnoc_jax.segmentation import train as seg_train
from tests.conftest import as_flags, run_main, tiny_run_overrides


def _backbone_file(path, output_stride: int = 8) -> dict:
    """A tiny backbone's variables saved as a converted ImageNet file at `path`."""
    module = build_backbone("tiny", output_stride=output_stride)
    variables = module.init(jax.random.key(3), jnp.zeros((1, 32, 32, 3)), train=False)
    tree = {col: {"backbone": jax.device_get(v)} for col, v in variables.items()}
    weights.save(tree, str(path))
    return tree


def test_home_relative_weights_start_from_that_file(tiny_config, tmp_path, monkeypatch):
    """`model.pretrained="~/tiny.npz"` passes validation and starts train_oc from that file."""
    monkeypatch.setenv("HOME", str(tmp_path))
    saved = _backbone_file(tmp_path / "tiny.npz")
    config = tiny_config
    config.model.pretrained = "~/tiny.npz"
    config.oc.update(steps=1)
    config.stages = ("train_oc",)
    pipeline.validate(config, config_lib.Topology(jax.device_count()))
    start = cam_train.backbone_start(config, "oc")
    workdir = str(tmp_path / "run")
    assert start.path(workdir) == str(tmp_path / "tiny.npz") and start.deps() == ()
    model = cam_train.build_model(config)
    init = start.initializer(workdir, model, (1, 32, 32, 3))
    fresh = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
    fresh = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), dict(fresh))
    started = init(fresh)
    same = jax.tree.map(np.array_equal, started["params"]["backbone"], saved["params"]["backbone"])
    assert all(jax.tree.leaves(same))


@pytest.mark.slow  # a one-step training
def test_home_relative_weights_through_the_command_line(synthetic_data_dir, tmp_path):
    """`--config.model.pretrained=~/tiny.npz` on the command line starts train_oc ("~" is
    $HOME: `fileio.expand` in every key that names a file; `train.oc_weights` is checked
    in-process below)."""
    home = tmp_path / "home"
    home.mkdir()
    _backbone_file(home / "tiny.npz")
    workdir = str(tmp_path / "run")
    overrides = tiny_run_overrides(synthetic_data_dir, ("train_oc",))
    result = run_main(
        "--workdir", workdir, *as_flags({**overrides, "oc.steps": 1}),
        "--config.model.pretrained=~/tiny.npz", env={"HOME": str(home)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "RANDOM backbone" not in result.stderr
    assert weights.load(artifacts.weights_file(workdir, "train_oc"))["params"]["backbone"]


def test_sources_and_the_stages_they_read(tiny_config, tmp_path):
    config = tiny_config
    config.saliency.backbone_weights = "train_oc"
    assert saliency_train.backbone_start(config).deps() == ("train_oc",)
    assert saliency_train.deps(config) == ("infer_cam", "train_oc")
    config.segmentation.backbone_weights = "train_cam"
    start = seg_train.backbone_start(config, "train_segmentation")
    assert start.deps() == ("train_cam",)
    assert start.path("/w") == artifacts.weights_file("/w", "train_cam")
    # f starts from the OC; a user's own OC file replaces this workdir's train_oc.
    config.train.update(init_backbone_from="train_oc", oc_weights="~/oc.npz")
    start = cam_train.backbone_start(config, "train")
    assert start.source == "train_oc" and start.deps() == ()
    assert start.path("/w").endswith("/oc.npz") and "~" not in start.path("/w")
    # ImageNet weights: the section's own file, else the CAM network's for its architecture.
    config.segmentation.update(backbone_weights="pretrained", pretrained="", backbone="")
    config.model.pretrained = "/x/tiny.npz"
    start = seg_train.backbone_start(config, "train_segmentation")
    assert (start.pretrained, start.pretrained_key) == ("/x/tiny.npz", "model.pretrained")
    config.segmentation.backbone = "resnet18"
    start = seg_train.backbone_start(config, "train_segmentation")
    assert (start.pretrained, start.pretrained_key) == ("", "segmentation.pretrained")
    assert start.path("/w") == ""


def test_checks_name_the_key(tiny_config):
    config = tiny_config
    start = BackboneStart("train_x", "resnet50", "pretrained", "x.backbone_weights")
    with pytest.raises(config_lib.ConfigError, match=r"^config.model.pretrained='': .*resnet50"):
        start.validate(config, needs_pretrained=True)
    start.validate(config, needs_pretrained=False)  # the synthetic data: random is fine
    config.model.allow_random_init = True
    start.validate(config, needs_pretrained=True)
    trained = BackboneStart("train_x", "resnet50", "train_cam", "x.backbone_weights")
    with pytest.raises(config_lib.ConfigError, match=r"x.backbone_weights='train_cam'"):
        trained.validate(config, needs_pretrained=False)


def test_a_file_of_another_architecture_is_refused_before_training(tiny_config, tmp_path):
    _backbone_file(tmp_path / "tiny.npz")
    config = tiny_config
    config.affinity.update(backbone="resnet18", backbone_weights="pretrained")
    config.model.pretrained = str(tmp_path / "tiny.npz")
    start = BackboneStart.from_section(config, "train_affinity", "affinity", "resnet18")
    assert start.pretrained == ""  # model.pretrained is the tiny CAM network's, not resnet18's
    start = BackboneStart("train_affinity", "resnet18", "pretrained", "affinity.backbone_weights",
                          pretrained=str(tmp_path / "tiny.npz"))  # fmt: skip
    model = build_backbone("resnet18", output_stride=16, name="backbone")
    with pytest.raises(weights.WeightsError, match=r"tiny\.npz: not a resnet18 backbone"):
        start.initializer(str(tmp_path), _Wrap(model), (1, 32, 32, 3))


class _Wrap:
    """A network whose `backbone` module is `module` (what initializers load into)."""

    def __init__(self, module):
        self.module = module

    def init(self, key, x, train=False):
        return {
            col: {"backbone": tree} for col, tree in self.module.init(key, x, train=train).items()
        }


def test_recipes_know_which_strategies_read_the_oc():
    for name in strategies.STRATEGIES:
        section = config_lib.base_config().train
        section.update(strategy=name, init_backbone_from="")
        assert ("train_oc" in common.prior_stages(section)) == strategies.reads_oc(section), name
