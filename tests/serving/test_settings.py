"""Each deployment's ``user_config`` and the application's ``args``, typed: a key in the wrong place is refused
with where it belongs, before any replica starts (and by the replica that would receive it)."""

from __future__ import annotations

import inspect

import pytest
import yaml

from boneage.serving.app import AppArgs, app, build_app
from boneage.serving.runner import load_config, with_overrides
from boneage.serving.settings import (
    DEPLOYMENT_NAME,
    MODEL_DEPLOYMENT_NAME,
    IngressSettings,
    ModelSettings,
    check_serve_config,
)


@pytest.mark.parametrize("cls, key, home", [
    (IngressSettings, "max_batch_size", MODEL_DEPLOYMENT_NAME),
    (IngressSettings, "model", MODEL_DEPLOYMENT_NAME),
    (ModelSettings, "busy_batch_wait_s", DEPLOYMENT_NAME),
    (ModelSettings, "max_upload_bytes", DEPLOYMENT_NAME),
])
def test_a_key_under_the_other_deployment_is_refused_with_where_it_belongs(cls, key, home):
    with pytest.raises(ValueError, match=rf"unknown {cls.DEPLOYMENT} user_config keys: \['{key}'\] "
                                         rf"\({key} belongs to {home}'s user_config\)"):
        cls.from_user_config({key: 1})


def test_a_typo_is_refused_with_the_known_keys():
    with pytest.raises(ValueError, match=r"\['max_batch_sise'\] \(known: \[.*'max_batch_size'"):
        ModelSettings.from_user_config({"max_batch_sise": 4})


def _config(tmp_path, move: tuple[str, str, str] | None = None) -> dict:
    """The shipped config, with one key moved from a deployment's user_config to the other's."""
    config = load_config()
    if move:
        key, source, target = move
        deployments = {d["name"]: d for d in config["applications"][0]["deployments"]}
        deployments[target]["user_config"][key] = deployments[source]["user_config"].pop(key)
    path = tmp_path / "serve_config.yaml"
    path.write_text(yaml.safe_dump(config))
    return config


def test_the_shipped_config_reads_and_a_misplaced_key_stops_the_deploy(tmp_path):
    check_serve_config(load_config())  # every key where it belongs
    _config(tmp_path, ("busy_batch_wait_s", DEPLOYMENT_NAME, MODEL_DEPLOYMENT_NAME))
    with pytest.raises(ValueError, match="busy_batch_wait_s belongs to BoneAge's user_config"):
        load_config(tmp_path / "serve_config.yaml")
    _config(tmp_path, ("max_batch_size", MODEL_DEPLOYMENT_NAME, DEPLOYMENT_NAME))
    with pytest.raises(ValueError, match="max_batch_size belongs to BoneAgeModel's user_config"):
        load_config(tmp_path / "serve_config.yaml")


def test_boneage_serve_options_land_in_the_model_deployments_user_config():
    config = with_overrides(load_config(), model="untrained", port=8123)
    (model,) = [d for d in config["applications"][0]["deployments"] if d["name"] == MODEL_DEPLOYMENT_NAME]
    assert model["user_config"]["model"] == "untrained" and config["http_options"]["port"] == 8123
    bare = {"applications": [{"name": "a", "import_path": "boneage.serve:app"}]}  # boneage 0.1's path
    config = with_overrides(bare, model="m")
    assert config["applications"][0]["import_path"] == "boneage.serving.app:app"
    assert config["applications"][0]["deployments"] == [{"name": MODEL_DEPLOYMENT_NAME, "user_config": {"model": "m"}}]
    assert config["http_options"] == {"host": "127.0.0.1", "port": 8000}
    with pytest.raises(ValueError, match="runs boneage.serving.app:app only"):
        with_overrides({"applications": [{"name": "a", "import_path": "other:app"}]})


def test_the_builder_is_typed_and_refuses_unknown_args():
    """Serve validates a builder's ``args`` against the pydantic model its one parameter is annotated with."""
    assert inspect.signature(app).parameters["args"].annotation is AppArgs
    assert AppArgs.model_validate(load_config()["applications"][0]["args"]).num_gpus == "auto"
    with pytest.raises(ValueError, match="memory"):
        AppArgs.model_validate({"memory": 2})  # Ray's name, not the app's (memory_gib)
    with pytest.raises(ValueError, match="memory_gib"):
        AppArgs(memory_gib=0)
    with pytest.raises(ValueError, match="num_gpus"):
        build_app({"num_gpus": "all"})
    model = build_app(AppArgs(num_gpus=0, model_num_cpus=2))._bound_deployment.init_args[0]._bound_deployment
    assert model.ray_actor_options == {"num_cpus": 2.0, "num_gpus": 0.0, "memory": int(1.5 * 1024**3)}
