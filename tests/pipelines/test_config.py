"""Config loading: YAML, --set overrides, readable one-line errors, the hash."""

from __future__ import annotations

from pathlib import Path

import pytest

from pairmine.pipelines.config import ConfigError, config_hash, load_config, to_yaml
from pairmine.pipelines.syn4removal import Syn4RemovalConfig
from pairmine.pipelines.video4removal import Video4RemovalConfig

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name, model", [("syn4removal", Syn4RemovalConfig), ("video4removal", Video4RemovalConfig)])
def test_shipped_yaml_equals_the_packaged_defaults(name, model):
    assert load_config(model, str(REPO / "configs" / f"{name}.yaml")) == model()


def test_set_overrides_nested_keys_with_yaml_values(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("seed: 3\nplacement:\n  grid: 32\n")
    config = load_config(Syn4RemovalConfig, str(path), ["placement.grid=16", "placement.scales=[1.0, 0.5]", "backgrounds.resize_short_side=512"])
    assert (config.seed, config.placement.grid, config.placement.scales) == (3, 16, (1.0, 0.5))
    assert config.backgrounds.resize_short_side == 512


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("placement.max_overlap=0.3", "unknown key 'placement.max_overlap' (known here: "),
        ("nosuch.key=1", "unknown key 'nosuch'"),
        ("placement.max_instance_overlap=1.5", "placement.max_instance_overlap: Input should be less than or equal to 1 (got 1.5)"),
        ("group_size=abc", "group_size: Input should be a valid integer"),
        ("entities.min_area_ratio=0.99", "min_area_ratio (0.99) must be below max_area_ratio"),
        ("entities.scorer.name=clip-xl", "entities.scorer.name"),
        ("placement.scales=[]", "scales must be a non-empty list"),
        ("seed=true", "seed: expected a number, not a boolean"),
        ("ray.num_cpus=false", "ray.num_cpus: expected a number, not a boolean"),
        ("placement.scales=[1.0, 0.5", "--set placement.scales: value '[1.0, 0.5' is not valid YAML (line 1, column"),
    ],
)
def test_errors_name_the_key_on_one_line(override, fragment):
    with pytest.raises(ConfigError) as error:
        load_config(Syn4RemovalConfig, None, [override])
    assert fragment in str(error.value) and "\n" not in str(error.value)


def test_bad_yaml_duplicate_keys_and_non_mapping_files_are_config_errors(tmp_path):
    files = {
        "broken.yaml": ("seed: 1\nplacement: [1, 2\ngroup_size: 3\n", "not valid YAML: line 3, column 11: expected ',' or ']'"),
        "twice.yaml": ("seed: 1\nplacement:\n  grid: 8\n  grid: 16\n", "not valid YAML: line 4, column 3: duplicate key 'grid'"),
        "list.yaml": ("- 1\n- 2\n", "must be a mapping"),
    }
    for name, (text, fragment) in files.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ConfigError) as error:
            load_config(Syn4RemovalConfig, str(tmp_path / name))
        assert fragment in str(error.value) and "\n" not in str(error.value)


def test_hash_covers_what_decides_samples_only():
    base = config_hash(Syn4RemovalConfig())
    assert config_hash(load_config(Syn4RemovalConfig, None, ["shards.max_samples=5", "ray.num_cpus=1"])) == base
    assert config_hash(load_config(Syn4RemovalConfig, None, ["seed=1"])) != base
    assert config_hash(load_config(Syn4RemovalConfig, None, ["placement.grid=65"])) != base


def test_yaml_round_trip():
    config = load_config(Syn4RemovalConfig, None, ["seed=9", "mask_enhancement.modes=[exact, dilate]"])
    import yaml

    assert Syn4RemovalConfig.model_validate(yaml.safe_load(to_yaml(config))) == config
