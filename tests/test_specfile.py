"""Spec files: YAML and JSON become JobSpec messages; every failure names the file and why."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bptrain.specfile import SpecFileError, load_spec_file, spec_from_dict
from bptrain.v1 import training_pb2 as pb
from services.api.convert import spec_from_proto

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "digits.yaml"

BLOBS_YAML = """\
name: blobs
dataset:
  name: synthetic/blobs
  validation_fraction: 0.2
  classes: 4
layers:
  - {units: 8, activation: relu}
  - {units: 4, activation: identity}
optimizer:
  kind: momentum
  learning_rate: 0.05
batch_size: 32
steps: 100
workers: 3
seed: 9
"""


def blobs_dict() -> dict:
    return {
        "name": "blobs",
        "dataset": {"name": "synthetic/blobs", "validation_fraction": 0.2, "classes": 4},
        "layers": [
            {"units": 8, "activation": "relu"},
            {"units": 4, "activation": "identity"},
        ],
        "optimizer": {"kind": "momentum", "learning_rate": 0.05},
        "batch_size": 32,
        "steps": 100,
        "workers": 3,
        "seed": 9,
    }


def expected_blobs() -> pb.JobSpec:
    return pb.JobSpec(
        name="blobs",
        dataset=pb.DatasetSpec(name="synthetic/blobs", validation_fraction=0.2, classes=4),
        layers=[
            pb.LayerSpec(units=8, activation="relu"),
            pb.LayerSpec(units=4, activation="identity"),
        ],
        optimizer=pb.OptimizerSpec(kind="momentum", learning_rate=0.05),
        batch_size=32,
        steps=100,
        workers=3,
        seed=9,
    )


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def spec_file_error(path: Path) -> str:
    with pytest.raises(SpecFileError) as caught:
        load_spec_file(path)
    return str(caught.value)


# --- files that parse ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["blobs.yaml", "blobs.yml"])
def test_yaml_file_with_snake_case_keys_parses(tmp_path: Path, name: str) -> None:
    message = load_spec_file(write(tmp_path, name, BLOBS_YAML))

    assert message == expected_blobs()


def test_json_file_with_snake_case_keys_parses(tmp_path: Path) -> None:
    message = load_spec_file(write(tmp_path, "blobs.json", json.dumps(blobs_dict())))

    assert message == expected_blobs()


def test_a_path_given_as_a_string_parses(tmp_path: Path) -> None:
    path = write(tmp_path, "blobs.yaml", BLOBS_YAML)

    assert load_spec_file(str(path)) == expected_blobs()


def test_lower_camel_keys_parse_too() -> None:
    data = blobs_dict()
    data["batchSize"] = data.pop("batch_size")
    data["dataset"]["validationFraction"] = data["dataset"].pop("validation_fraction")

    assert spec_from_dict(data) == expected_blobs()


def test_fields_left_out_stay_unset_for_their_defaults(tmp_path: Path) -> None:
    text = "dataset: {name: digits}\nlayers: [{units: 10, activation: identity}]\n"

    message = load_spec_file(write(tmp_path, "small.yaml", text))

    assert not message.HasField("batch_size")
    assert not message.optimizer.HasField("learning_rate")
    assert spec_from_proto(message).batch_size == 64


def test_an_explicit_zero_is_kept_so_validation_can_reject_it(tmp_path: Path) -> None:
    text = "dataset: {name: digits}\nlayers: [{units: 10, activation: identity}]\nworkers: 0\n"

    message = load_spec_file(write(tmp_path, "zero.yaml", text))

    assert message.HasField("workers")
    assert message.workers == 0


def test_the_digits_example_loads_and_validates() -> None:
    message = load_spec_file(EXAMPLE)
    spec = spec_from_proto(message)

    assert spec.name == "digits-mlp"
    assert spec.sizes == [64, 256, 128, 10]
    assert spec.activations == ["relu", "relu", "identity"]
    assert (spec.optimizer.kind, spec.optimizer.learning_rate) == ("adam", 0.001)
    assert spec.dataset.validation_fraction == 0.05
    assert (spec.batch_size, spec.epochs, spec.workers, spec.seed) == (64, 40, 2, 2)


def test_the_early_stopping_example_loads_with_its_rule() -> None:
    spec = spec_from_proto(load_spec_file(EXAMPLE.with_name("digits-stop-early.yaml")))
    assert spec.stop_when.metric == "validation_accuracy"
    assert (spec.stop_when.at_least, spec.stop_when.patience_evaluations) == (0.98, 10)
    assert (spec.epochs, spec.eval_every) == (200, 20)


# --- files that do not ---------------------------------------------------------------------


def test_an_unknown_top_level_field_is_an_error_naming_it(tmp_path: Path) -> None:
    path = write(tmp_path, "typo.yaml", BLOBS_YAML + "learning_rate: 0.1\n")

    message = spec_file_error(path)

    assert str(path) in message
    assert '"learning_rate"' in message


def test_an_unknown_nested_field_is_an_error_naming_it(tmp_path: Path) -> None:
    data = blobs_dict()
    data["layers"][0]["dropouts"] = 0.5
    path = write(tmp_path, "nested.json", json.dumps(data))

    message = spec_file_error(path)

    assert str(path) in message
    assert '"dropouts"' in message


def test_a_value_of_the_wrong_type_is_an_error_naming_the_field(tmp_path: Path) -> None:
    path = write(tmp_path, "type.yaml", BLOBS_YAML.replace("batch_size: 32", "batch_size: lots"))

    message = spec_file_error(path)

    assert str(path) in message
    assert "batch_size" in message


def test_invalid_yaml_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "broken.yaml", "name: [unclosed\nlayers: {\n")

    message = spec_file_error(path)

    assert message.startswith(f"{path}: not valid yaml")


def test_invalid_json_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "broken.json", '{"name": "x",}')

    message = spec_file_error(path)

    assert message.startswith(f"{path}: not valid json")


def test_json_is_not_accepted_from_a_yaml_parser_when_the_suffix_says_json(
    tmp_path: Path,
) -> None:
    # YAML would accept this; a .json file is parsed strictly as JSON.
    path = write(tmp_path, "yaml-inside.json", BLOBS_YAML)

    assert spec_file_error(path).startswith(f"{path}: not valid json")


def test_a_missing_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"

    message = spec_file_error(path)

    assert message.startswith(f"{path}: cannot read")
    assert "No such file" in message


def test_a_folder_is_not_a_spec_file(tmp_path: Path) -> None:
    assert spec_file_error(tmp_path).startswith(f"{tmp_path}: cannot read")


def test_a_file_that_is_not_utf8_text_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "binary.yaml"
    path.write_bytes(b"\xff\xfe\x00\x01name: x\n")

    assert spec_file_error(path).startswith(f"{path}: not UTF-8 text")


@pytest.mark.parametrize(
    ("name", "text", "kind"),
    [
        ("list.yaml", "- units: 10\n- units: 3\n", "list"),
        ("scalar.yaml", "just a string\n", "str"),
        ("empty.yaml", "", "NoneType"),
        ("list.json", "[1, 2]", "list"),
        ("number.json", "42", "int"),
    ],
)
def test_a_document_that_is_not_a_mapping_names_the_path(
    tmp_path: Path, name: str, text: str, kind: str
) -> None:
    path = write(tmp_path, name, text)

    message = spec_file_error(path)

    assert message == f"{path}: expected a mapping of JobSpec fields, got {kind}"


def test_spec_from_dict_names_its_source() -> None:
    with pytest.raises(SpecFileError, match=r"^inline: .*\"epochz\""):
        spec_from_dict({"epochz": 3}, source="inline")
