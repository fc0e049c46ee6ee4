"""olmo_sam.preflight: value types, the output-path check, the JSON/safetensors readers, device
strings and local-path-versus-hub-id, each failing with one line that names what was given."""

from __future__ import annotations

import os

import click
import pytest
import torch
from olmo_core.exceptions import OLMoConfigurationError

from olmo_sam.files import iter_jsonl, read_json
from olmo_sam.preflight import (
    DEVICE,
    NON_NEGATIVE_INT,
    POSITIVE_FLOAT,
    POSITIVE_INT,
    check_local_model,
    check_out,
    check_safetensors,
    looks_local,
)


def test_zero_and_negative_are_errors_not_defaults():
    assert POSITIVE_INT.convert("3", None, None) == 3
    assert NON_NEGATIVE_INT.convert("0", None, None) == 0
    for kind, bad in (
        (POSITIVE_INT, "0"),
        (POSITIVE_INT, "-1"),
        (NON_NEGATIVE_INT, "-1"),
        (POSITIVE_FLOAT, "0"),
        (POSITIVE_FLOAT, "-1e-3"),
    ):
        with pytest.raises(click.BadParameter):
            kind.convert(bad, None, None)


def test_out_checks(tmp_path):
    a_file = tmp_path / "f"
    a_file.write_text("")
    assert check_out(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"  # creatable
    assert not (tmp_path / "new").exists()  # and nothing created
    with pytest.raises(OLMoConfigurationError, match=f"--out {a_file}: exists and is a file"):
        check_out(a_file)
    with pytest.raises(OLMoConfigurationError, match=f"cannot be created, {a_file} is a file"):
        check_out(a_file / "x", flag="--out")
    with pytest.raises(OLMoConfigurationError, match="is a directory, expected a file path"):
        check_out(tmp_path, kind="file")
    check_out(a_file, kind="file")  # an existing file output is replaced, not refused


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_directory(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(OLMoConfigurationError, match="is not writable"):
            check_out(ro / "out")
    finally:
        ro.chmod(0o755)


def test_json_and_safetensors_readers_name_the_file(tmp_path):
    bad = tmp_path / "config.json"
    bad.write_text('{"a": ')
    with pytest.raises(OLMoConfigurationError, match=f"{bad}: the checkpoint config.json is not valid JSON"):
        read_json(bad, what="checkpoint config.json")
    with pytest.raises(OLMoConfigurationError, match="not found"):
        read_json(tmp_path / "missing.json")
    lines = tmp_path / "metrics.jsonl"
    lines.write_text('{"a": 1}\n\n{"b": 2}\n{"c": \n')
    got = []
    with pytest.raises(OLMoConfigurationError, match=f"{lines}:4: the metrics file is not valid JSON"):
        for where, rec in iter_jsonl(lines, what="metrics file"):
            got.append((where, rec))
    assert got == [(f"{lines}:1", {"a": 1}), (f"{lines}:3", {"b": 2})]  # blank lines skipped, lines numbered
    with pytest.raises(OLMoConfigurationError, match="metrics file not found"):
        list(iter_jsonl(tmp_path / "missing.jsonl", what="metrics file"))
    with pytest.raises(OLMoConfigurationError, match="is a directory"):
        list(iter_jsonl(tmp_path, what="metrics file"))
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(64)}, str(tmp_path / "model.safetensors"))
    check_safetensors(tmp_path)  # a whole file passes
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(OLMoConfigurationError, match="model.safetensors: the model weights could not be read"):
        check_safetensors(tmp_path)


def test_device_strings():
    assert DEVICE.convert("cpu", None, None) == "cpu"
    for bad, msg in (("gpu0", "is not a torch device"), ("cuda:99", "cuda"), ("xla", "not supported")):
        if bad == "cuda:99" and torch.cuda.device_count() > 99:
            continue
        with pytest.raises(click.BadParameter, match=msg):
            DEVICE.convert(bad, None, None)


def test_local_paths_are_not_hub_ids(tmp_path):
    assert not looks_local("allenai/OLMo-2-0425-1B") and not looks_local("gpt2")
    assert looks_local("./model") and looks_local("/abs/model") and looks_local("runs/demo/export")
    assert check_local_model("allenai/OLMo-2-0425-1B", flag="SOURCE") is False
    with pytest.raises(OLMoConfigurationError, match="SOURCE ./nope: no such directory"):
        check_local_model("./nope", flag="SOURCE")


def test_the_command_line_shows_user_errors_as_one_line_and_lets_bugs_through(tmp_path):
    """Every sub-command runs inside the olmo-sam group's error boundary (olmo_sam.preflight.cli_errors)."""
    from click.testing import CliRunner

    from olmo_sam.cli import main
    from olmo_sam.data.fetch import AssetError
    from olmo_sam.preflight import CommandError, cli_errors
    from olmo_sam.probes.quantize import QuantizationError

    for error in (
        OLMoConfigurationError("x.lr: must be > 0,\n  got -1"),
        AssetError("demo corpus: checksum mismatch"),
        QuantizationError("model.blocks.0 is not 4-bit"),
        FileNotFoundError(2, "No such file or directory", "/no/such"),
    ):
        assert isinstance(error, (OLMoConfigurationError, CommandError, OSError))

        def boom(error=error):
            raise error

        with pytest.raises(click.ClickException) as e:
            cli_errors(boom)()
        assert "\n" not in e.value.message and e.value.message, e.value.message
    with pytest.raises(ZeroDivisionError):  # a bug keeps its traceback
        cli_errors(lambda: 1 / 0)()
    # and through the real group: a sub-command's configuration error is one line, exit code 1
    res = CliRunner().invoke(main, ["data", "info", str(tmp_path)])
    assert res.exit_code == 1 and res.output.startswith("Error: ") and res.output.count("\n") == 1, res.output
