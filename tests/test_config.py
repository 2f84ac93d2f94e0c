from dataclasses import dataclass, field
from typing import Literal

import pytest

from s3kit.config import ConfigError, apply_overrides, build, to_dict


@dataclass(frozen=True)
class Optim:
    lr: float = 2e-4
    betas: tuple[float, float] = (0.9, 0.98)


@dataclass(frozen=True)
class Recipe:
    layers: int = 2
    targets: list[int] = field(default_factory=lambda: [4, 8, 12])
    schedule: Literal["linear", "cosine"] = "linear"
    optim: Optim = field(default_factory=Optim)


def test_yaml_recipe_with_base_and_overrides(tmp_path):
    (tmp_path / "base.yaml").write_text("layers: 3\noptim:\n  lr: 1.0e-3\n")
    (tmp_path / "exp.yaml").write_text("base: base.yaml\ntargets: [12]\n")
    cfg = build(Recipe, tmp_path / "exp.yaml", ["optim.lr=5e-5", "schedule=cosine"])
    assert cfg == Recipe(layers=3, targets=[12], schedule="cosine", optim=Optim(lr=5e-5))
    assert to_dict(cfg)["optim"]["betas"] == [0.9, 0.98]


def test_unknown_key_suggests_closest():
    with pytest.raises(ConfigError, match="did you mean 'layers'"):
        build(Recipe, {"layres": 3})
    with pytest.raises(ConfigError, match="did you mean 'optim.lr'"):
        apply_overrides(Recipe(), ["optim.lrr=1"])


def test_type_errors_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="layers: expected an integer"):
        apply_overrides(Recipe(), ["layers=two"])
    with pytest.raises(ConfigError, match="not one of"):
        apply_overrides(Recipe(), ["schedule=exp"])
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides(Recipe(), ["layers"])
    (tmp_path / "bad.yaml").write_text("layers: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        build(Recipe, tmp_path / "bad.yaml")


@dataclass(frozen=True)
class Method:
    optim: Optim = field(default_factory=lambda: Optim(lr=1e-6, betas=(0.5, 0.5)))


def test_partial_section_keeps_the_parents_defaults():
    cfg = build(Method, {"optim": {"lr": 3e-4}})
    assert cfg.optim == Optim(lr=3e-4, betas=(0.5, 0.5))


@dataclass(frozen=True)
class WithMapping:
    model: dict = field(default_factory=dict)
    optim: Optim = field(default_factory=Optim)


def test_dotted_override_into_a_mapping_field():
    cfg = apply_overrides(WithMapping(), ["model.num_layers=2", "model.width=64"])
    assert cfg.model == {"num_layers": 2, "width": 64}
    with pytest.raises(ConfigError, match="did you mean 'optim.lr'"):
        apply_overrides(WithMapping(), ["optim.lrr=1"])
