"""The job spec: sections owned by their packages, validated once (fields, then against the model), dotted errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from search.errors import ConfigError, ModelLoadError
from search.spec import UniformBudget
from supernet.settings import SupernetSettings
from supernet.testing import write_feature_program
from supernet.zoo.modeldir import TESTBED_DIR
from workers.evaluation_settings import DEFAULT_RESCORE_SAMPLES
from workers.jobspec import JobSpec, spec_field, upgrade_spec_dict, validate_job
from workers.ray_config import RayConfig

ROOT = TESTBED_DIR.parent
FULL: dict[str, Any] = {
    "version": 2,
    "model": {"path": "digits-ddpm-16", "device": "cpu", "dtype": "float32"},
    "search": {"bit_options": [4, 6, 8], "steps": [5, 10], "granularity": "block", "budget": "W6A6@10"},
    "calibration": {"strategy": "range", "samples": 16},
    "evaluation": {"objective": "mse", "samples": 32, "reference_steps": 50, "rescore_samples": 256},
    "execution": {"ray": {"num_actors": 2, "task_timeout_s": 600}},
}


@pytest.fixture
def other_model(tmp_path: Path) -> Path:
    """A model root holding a copy of the testbed with other weights bytes: no feature extractor, T = 200."""
    root = tmp_path / "models"
    model = root / "rgb"
    shutil.copytree(TESTBED_DIR, model, ignore=shutil.ignore_patterns("tmpq-supernets"))
    weights = next((model / "unet").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes() + b" ")  # another model hash: not the testbed any more
    cfg = model / "scheduler" / "scheduler_config.json"
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "num_train_timesteps": 200}))
    return model


def test_sections_round_trip_and_defaults() -> None:
    spec = validate_job(FULL, ROOT)
    assert Path(spec.model.path) == TESTBED_DIR.resolve() and spec.model.device == "cpu"
    assert spec.search.steps == (5, 10) and spec.search.budget == UniformBudget(6, 6, 10)
    assert spec.calibration.strategy == "range" and spec.calibration.samples == 16
    assert spec.execution.ray == {"num_actors": 2, "task_timeout_s": 600}
    data = spec.to_dict()
    assert set(data) == {"version", "model", "search", "calibration", "quantization", "evaluation", "execution"}
    assert JobSpec.from_dict(json.loads(json.dumps(data))) == spec
    bare = validate_job({"model": "digits-ddpm-16"}, ROOT)  # a bare path string is a model section
    assert bare.model.dtype == "float32" and bare.search.algorithm == "nsga2"
    assert bare.evaluation.rescore_samples == DEFAULT_RESCORE_SAMPLES  # the testbed has a feature extractor


def test_from_yaml(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(FULL))
    assert JobSpec.from_yaml(path) == JobSpec.from_dict(FULL)
    path.write_text("- not a mapping\n")
    with pytest.raises(ConfigError) as info:
        JobSpec.from_yaml(path)
    assert info.value.field == "spec"


def _with(path: str, value: Any) -> dict[str, Any]:
    """FULL with the dotted field ``path`` set to ``value``."""
    data = json.loads(json.dumps(FULL))
    *parents, last = path.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    return data


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        ("calibration.bogus", 1, "calibration.bogus"),
        ("calibration.strategy", "nope", "calibration.strategy"),
        ("calibration.samples", -1, "calibration.samples"),
        ("calibration.samples", 1_000_000, "calibration.samples"),
        ("calibration.recon_iters", 10**9, "calibration.recon_iters"),
        ("calibration.strategy_params", {f"p{i}": i for i in range(100)}, "calibration.strategy_params"),
        ("calibration.version", "x", "calibration.version"),
        ("search.population", 100_000, "search.population"),
        ("search.generations", 100_000, "search.generations"),
        ("search.colour", "red", "search.colour"),
        ("evaluation.samples", 1_000_000, "evaluation.samples"),
        ("evaluation.rescore_samples", 10**7, "evaluation.rescore_samples"),
        ("evaluation.objective", "fid", "evaluation.objective"),
        ("evaluation.batch_size", 0, "evaluation.batch_size"),
        ("evaluation.features", "", "evaluation.features"),
        ("evaluation.features", 3, "evaluation.features"),
        ("evaluation.objective", "fd", "evaluation.objective"),  # fd without a feature program
        ("evaluation.latency_backend", "reference", "evaluation.latency_backend"),  # no kernels to price
        ("evaluation.latency_backend", "tpu-int4", "evaluation.latency_backend"),
        ("evaluation.latency_batch_size", 8, "evaluation.latency_batch_size"),  # without a backend
        ("search.cost", "latency", "search.cost"),  # without evaluation.latency_backend
        ("search.cost", "joules", "search.cost"),
        ("execution.ray.address", "attacker:6379", "execution.ray.address"),
        ("execution.ray.num_actors", 0, "execution.ray.num_actors"),
        ("execution.ray.num_actors", 100_000, "execution.ray.num_actors"),
        ("execution.ray.object_store_bytes", 10**9, "execution.ray.object_store_bytes"),
        ("execution.ray.task_timeout_s", -1, "execution.ray.task_timeout_s"),
        ("execution.colour", 1, "execution.colour"),
        ("quantization.weight_symmetric", "yes", "quantization.weight_symmetric"),
        ("quantization.attention_matmuls", 1, "quantization.attention_matmuls"),
        ("quantization.exclude", "conv_out", "quantization.exclude"),
        ("quantization.exclude", [""], "quantization.exclude"),
        ("quantization.bits", 8, "quantization.bits"),
        ("quantization.version", 9, "quantization.version"),
        ("model.device", "tpu", "model.device"),
        ("model.dtype", "float64", "model.dtype"),
        ("model.tf32", "yes", "model.tf32"),
        ("model.prompts", "a digit", "model.prompts"),
        ("model.path", "", "model.path"),
        ("bit_options", [4, 8], "bit_options"),
        ("version", 3, "version"),
    ],
)
def test_every_bad_value_is_refused_naming_the_dotted_field(path: str, value: Any, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate_job(_with(path, value), ROOT)
    assert info.value.field == field
    assert "\n" not in str(info.value) and len(str(info.value)) < 400


def test_a_latency_search_needs_a_cpu_backend() -> None:
    spec = validate_job(_with("evaluation.latency_backend", "cpu-int8") | {"search": {"cost": "latency"}}, ROOT)
    assert spec.search.cost == "latency" and spec.evaluation.latency_batch == spec.evaluation.batch_size
    on_gpu = _with("evaluation.latency_backend", "cpu-int8")
    on_gpu["model"]["device"] = "cuda:1"
    with pytest.raises(ConfigError, match="runs on the CPU") as info:
        validate_job(on_gpu, ROOT)
    assert info.value.field == "evaluation.latency_backend"


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_every_compute_dtype_and_tf32_are_accepted(dtype: str) -> None:
    spec = validate_job(_with("model", {"path": "digits-ddpm-16", "dtype": dtype, "tf32": True}), ROOT)
    assert spec.model.dtype == dtype and spec.model.tf32 is True
    assert spec.model.to_dict()["dtype"] == dtype


def test_the_quantization_section_sets_the_supernets_integer_format() -> None:
    spec = validate_job(_with("quantization", {"weight_symmetric": True, "exclude": ["conv_out", "conv_in"]}), ROOT)
    assert spec.quantization.weight_symmetric and spec.quantization.exclude == ("conv_in", "conv_out")
    assert JobSpec.from_dict(spec.to_dict()) == spec
    assert spec.to_dict()["quantization"]["weight_symmetric"] is True
    assert validate_job(_with("search.seed", 1), ROOT).quantization == SupernetSettings()  # the default


def test_a_flat_field_is_pointed_to_its_section() -> None:
    with pytest.raises(ConfigError, match=r"belongs in the search section \(search.population\)"):
        JobSpec.from_dict({"model": "m", "population": 8})


@pytest.mark.parametrize("section", ["search", "calibration", "quantization", "evaluation", "execution"])
def test_a_section_that_is_not_a_mapping_is_refused(section: str) -> None:
    with pytest.raises(ConfigError) as info:
        JobSpec.from_dict({"model": "m", section: [1, 2]})
    assert info.value.field == section


def test_checks_against_the_model(other_model: Path) -> None:
    root = other_model.parent
    base = {"model": "rgb"}
    spec = validate_job(base, root)  # the defaults are valid for a model without a feature extractor
    assert spec.evaluation.rescore_samples == 0
    for data, field in (
        ({**base, "evaluation": {"objective": "fdd"}}, "evaluation.objective"),
        ({**base, "evaluation": {"rescore_samples": 256}}, "evaluation.rescore_samples"),
        ({**base, "evaluation": {"reference_steps": 500}}, "evaluation.reference_steps"),
        ({**base, "search": {"steps": 300}}, "search.steps"),
        ({**base, "search": {"steps": 4, "budget": "W6A6@500"}}, "search.budget"),
        ({**base, "calibration": {"grid_steps": 201}}, "calibration.grid_steps"),
        ({"model": {"path": "rgb", "prompts": ["a seven"]}}, "model.prompts"),
        ({"model": {"path": "rgb", "guidance_scale": 7.5}}, "model.guidance_scale"),
        ({"model": {"path": "rgb", "negative_prompt": "blurry"}}, "model.negative_prompt"),
        ({"model": {"path": "rgb", "images_per_prompt": 2}}, "model.images_per_prompt"),
    ):
        with pytest.raises(ConfigError) as info:
            validate_job(data, root)
        assert info.value.field == field, data


def test_a_text_to_image_job_resolves_its_prompts_and_guidance(tmp_path: Path) -> None:
    from supernet.conditioning import Conditioning
    from supernet.testing_sd import TINY_PROMPTS, tiny_sd_pipeline

    root = tmp_path / "models"
    tiny_sd_pipeline(root / "sd")  # ships prompts.txt and tmpq.json (guidance 3.0)
    tiny_sd_pipeline(root / "bare", prompts=None, guidance_scale=None)
    (root / "bare" / "mine.txt").write_text("# my prompts\na cat\n\na dog\n")
    spec = validate_job({"model": "sd", "search": {"solver": "dpmsolver++"}}, root)
    assert spec.model.prompts == TINY_PROMPTS and spec.model.guidance_scale == 3.0
    assert spec.search.solver == "dpmsolver++" and spec.evaluation.rescore_samples == 0
    assert spec.model.conditioning(spec.model.path) == Conditioning(TINY_PROMPTS, 3.0)
    assert JobSpec.from_dict(spec.to_dict()) == spec  # the stored spec says what ran
    own = validate_job({"model": {"path": "bare", "prompts_file": "mine.txt", "negative_prompt": ""}}, root)
    assert own.model.prompts == ("a cat", "a dog") and own.model.guidance_scale == 7.5  # diffusers' default
    assert own.model.condition_key() != spec.model.condition_key()
    listed = validate_job({"model": {"path": "bare", "prompts": ["x"], "images_per_prompt": 4}}, root)
    assert listed.model.prompts == ("x",) and listed.model.images_per_prompt == 4
    for data, field in (
        ({"model": "bare"}, "model.prompts"),  # no prompts and no prompts.txt
        ({"model": {"path": "sd", "prompts": []}}, "model.prompts"),
        ({"model": {"path": "sd", "prompts_file": "../bare/mine.txt"}}, "model.prompts_file"),
        ({"model": {"path": "sd", "prompts_file": "none.txt"}}, "model.prompts_file"),
        ({"model": {"path": "sd", "prompts": ["a"], "prompts_file": "prompts.txt"}}, "model.prompts_file"),
        ({"model": {"path": "sd", "images_per_prompt": 0}}, "model.images_per_prompt"),
        ({"model": {"path": "sd", "guidance_scale": 1000}}, "model.guidance_scale"),
        ({"model": "sd", "search": {"solver": "euler"}}, "search.solver"),
        ({"model": "sd", "evaluation": {"objective": "fdd"}}, "evaluation.objective"),
    ):
        with pytest.raises(ConfigError) as info:
            validate_job(data, root)
        assert info.value.field == field, data


def test_a_feature_program_resolves_under_the_model_root(other_model: Path, tmp_path: Path) -> None:
    root = other_model.parent
    write_feature_program(root / "features.pt2", 1)
    spec = validate_job({"model": "rgb", "evaluation": {"objective": "fd", "features": "features.pt2"}}, root)
    assert spec.evaluation.features == str((root / "features.pt2").resolve())
    assert validate_job({"model": "rgb", "evaluation": {"features": spec.evaluation.features}}, root).evaluation
    write_feature_program(tmp_path / "outside.pt2", 1)
    (root / "notes.txt").write_text("not a program")
    for features, reason in (
        ("missing.pt2", "does not exist"),
        (str(tmp_path / "outside.pt2"), "outside the model root"),
        ("../outside.pt2", "outside the model root"),
        ("rgb", "is not a file"),
        ("notes.txt", "not a torch.export program"),
    ):
        with pytest.raises(ConfigError, match=reason) as info:
            validate_job({"model": "rgb", "evaluation": {"features": features}}, root)
        assert info.value.field == "evaluation.features", features


def test_model_names_resolve_under_the_root(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        validate_job({"model": "digits-ddpm-16"}, tmp_path)
    with pytest.raises(ModelLoadError, match="outside the model root"):
        validate_job({"model": str(TESTBED_DIR)}, tmp_path)
    assert Path(validate_job({"model": str(TESTBED_DIR)}, ROOT).model.path) == TESTBED_DIR.resolve()


def test_version_1_specs_are_upgraded() -> None:
    old = {
        "version": 1,
        "model": "digits-ddpm-16",
        "bit_options": [4, 8],
        "population": 6,
        "samples": 16,
        "rescore_samples": 0,
        "calibration": {"strategy": "range"},
        "ray": {"address": "10.0.0.1:6379", "num_actors": 2},
        "output": "out/x",
    }
    spec = validate_job(old, ROOT)
    assert spec.search.bit_options == (4, 8) and spec.search.population == 6
    assert spec.evaluation.samples == 16 and spec.calibration.strategy == "range"
    assert spec.execution.ray == {"num_actors": 2}  # the cluster is the operator's: the old address is dropped
    assert upgrade_spec_dict(spec.to_dict()) == spec.to_dict()
    assert spec_field(old, "search.population") == 6 and spec_field(old, "model.path") == "digits-ddpm-16"
    assert spec_field(spec.to_dict(), "evaluation.samples") == 16 and spec_field(old, "search.nope", 3) == 3
    with pytest.raises(ConfigError) as info:
        JobSpec.from_dict({**old, "colour": "red"})
    assert info.value.field == "colour"


def test_a_jobs_ray_fields_are_checked_by_ray_configs_own_rules() -> None:
    spec = JobSpec.from_dict(FULL)
    config = RayConfig.for_job(spec.execution.ray, address="head:6379")
    assert config.address == "head:6379" and config.num_actors == 2 and config.task_timeout_s == 600
    with pytest.raises(ConfigError) as info:
        JobSpec.from_dict(_with("execution.ray.num_cpus", 0))  # with num_gpus 0: RayConfig refuses it
    assert info.value.field == "execution.ray.num_cpus"


def test_the_spec_is_torch_and_ray_free() -> None:
    code = (
        "import sys; from workers.jobspec import validate_job; "
        "from server.submission import validate_submission; "
        "assert not {'torch', 'ray', 'diffusers'} & set(sys.modules), sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])


def test_latency_label_names_the_backend_and_batch_of_a_latency_search() -> None:
    from workers.jobspec import latency_label

    searched = validate_job(_with("evaluation.latency_backend", "cpu-int8") | {"search": {"cost": "latency"}}, ROOT)
    assert latency_label(searched.to_dict()) == f"cpu-int8 at batch {searched.evaluation.batch_size}"
    sized = searched.replace(evaluation=searched.evaluation.replace(latency_batch_size=8))
    assert latency_label(sized.to_dict()) == "cpu-int8 at batch 8"
    assert latency_label(validate_job(FULL, ROOT).to_dict()) is None  # a BitOps search
