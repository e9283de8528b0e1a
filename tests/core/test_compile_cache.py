"""The persistent compilation cache: where it goes, and that it can be turned off."""

import jax
import pytest

from pnoc_jax.core import compile_cache


@pytest.fixture
def restore_cache_dir():
    before = jax.config.jax_compilation_cache_dir
    yield
    jax.config.update("jax_compilation_cache_dir", before)


def test_explicit_dir_env_and_default(tmp_path, monkeypatch, restore_cache_dir):
    assert compile_cache.enable(str(tmp_path / "a")) == str(tmp_path / "a")
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "a")
    monkeypatch.setenv(compile_cache.ENV, str(tmp_path / "env"))
    assert compile_cache.enable(None) == str(tmp_path / "env")
    monkeypatch.delenv(compile_cache.ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert compile_cache.enable(None) == str(tmp_path / "xdg" / "pnoc_jax" / "jax")


def test_empty_string_enables_nothing(tmp_path, restore_cache_dir):
    compile_cache.enable(str(tmp_path / "kept"))
    assert compile_cache.enable("") == ""
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "kept")  # untouched
