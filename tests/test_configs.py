"""The resolved config of every ``configs/experiment/*.yaml`` (``train.py fit --config <it>``) stays
what ``tests/resolved_experiments.yaml`` records: each setting of the trainer (logger and callbacks
included), data, checkpoint and panel blocks that differs from the default of its class. The model
block is not compared. After a deliberate change to an experiment, rewrite the record with
``python tests/test_configs.py --update`` and review its diff.

Experiments state only what differs from the trainer, logger, data and model files they ``compose:``;
the tests at the end check that include mechanism (``lightning_recon.compose.expand_compose``).
"""
import contextlib
import io
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "configs" / "experiment"
RECORD = Path(__file__).with_name("resolved_experiments.yaml")
COMPARED = ("seed_everything", "trainer", "data", "checkpoint", "panels", "optimizer", "lr_scheduler")


def resolve(args) -> dict:
    """The config ``train.py fit <args> --print_config`` prints, as plain data, with the output
    folders its ``out`` setting gives (as ``train.py`` sets them before building the run)."""
    from lightning_recon.cli import cli_main, move_outputs

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), pytest.raises(SystemExit):
        cli_main([*args, "--print_config"], run=False)
    config = yaml.safe_load(printed.getvalue())
    move_outputs(config)
    return config


def flatten(value, prefix=""):
    """``{"a": {"b": 1}, "c": [{"d": 2}]}`` -> ``{"a.b": 1, "c.0.d": 2}``; lists of plain values stay whole."""
    if isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
        value = {str(i): item for i, item in enumerate(value)}
    if isinstance(value, dict) and value:
        out = {}
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: value}


def plain(value):
    """Tuples as lists, recursively (YAML spells both as lists)."""
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    return value


def class_default(class_path: str, name: str):
    """The default of ``__init__`` argument ``name`` of ``class_path`` or a base class (None if none)."""
    import importlib
    import inspect

    module, _, attribute = class_path.rpartition(".")
    cls = getattr(importlib.import_module(module), attribute)
    for base in cls.__mro__:
        parameter = inspect.signature(base.__init__).parameters.get(name) if "__init__" in vars(base) else None
        if parameter is not None and parameter.default is not inspect.Parameter.empty:
            return plain(parameter.default)
    return None


def explicit_settings(path: Path) -> dict:
    """The compared settings of experiment ``path`` that differ from the parser's defaults (for
    its data class) and, for ``init_args`` of any class (logger, callbacks), from that class's."""
    config = resolve(["--config", str(path)])
    defaults = resolve(["--data", config["data"]["class_path"]])
    ours = flatten({key: config[key] for key in COMPARED})
    base = flatten({key: defaults[key] for key in COMPARED})
    out = {}
    for key, value in sorted(ours.items()):
        if key in base and base[key] == value:
            continue
        owner, init_args, name = key.rpartition(".init_args.") if ".init_args." in key else ("", "", "")
        if init_args and "." not in name and value == class_default(ours[f"{owner}.class_path"], name):
            continue
        out[key] = value
    return out


def experiment_names():
    return sorted(path.stem for path in EXPERIMENTS.glob("*.yaml"))


def test_every_experiment_is_recorded():
    assert sorted(yaml.safe_load(RECORD.read_text())) == experiment_names()


@pytest.mark.parametrize("name", experiment_names())
def test_experiment_resolves_to_its_recorded_settings(name, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # relative paths inside configs resolve from the config file, not the CWD
    expected = yaml.safe_load(RECORD.read_text())[name]
    actual = explicit_settings(EXPERIMENTS / f"{name}.yaml")
    changed = {key: (expected.get(key, "<default>"), actual.get(key, "<default>"))
               for key in sorted(set(expected) | set(actual)) if expected.get(key, "<default>") != actual.get(key, "<default>")}
    assert not changed, f"{name}: recorded vs resolved {changed}"



def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def config_files(args):
    """The config files of ``--config FILE`` / ``--config=FILE`` arguments, in order."""
    return [arg.partition("=")[2] if arg.startswith("--config=") else args[i + 1]
            for i, arg in enumerate(args) if arg.startswith("--config=") or arg == "--config"]


def test_compose_reads_the_composed_files_first_and_the_file_overrides_them(tmp_path):
    from lightning_recon.compose import expand_compose

    write(tmp_path / "trainer" / "base.yaml", "trainer:\n  max_steps: 10\n  log_every_n_steps: 5\n")
    write(tmp_path / "logger" / "csv.yaml", "trainer:\n  logger:\n    class_path: lightning.pytorch.loggers.CSVLogger\n"
          "    init_args:\n      save_dir: outputs\n      name: csv\n")
    experiment = write(tmp_path / "experiment" / "run.yaml",
                       "# a comment\ncompose:\n  - ../trainer/base.yaml   # the trainer\n  - ../logger/csv.yaml\n"
                       "trainer:\n  max_steps: 20\n  logger:\n    init_args:\n      name: run\n")
    copies = tmp_path / "copies"
    copies.mkdir()
    args = expand_compose(["fit", "--config", str(experiment), "--trainer.max_steps=30"], copies)
    files = config_files(args)
    assert len(files) == 3 and args[0] == "fit" and args[-1] == "--trainer.max_steps=30"
    assert [Path(f).resolve() for f in files[:2]] == [(tmp_path / "trainer" / "base.yaml").resolve(),
                                                      (tmp_path / "logger" / "csv.yaml").resolve()]
    copy = Path(files[2])
    assert copy.parent.parent == copies and copy.name == "run.yaml" and "compose" not in copy.read_text()
    assert len(copy.read_text().splitlines()) == len(experiment.read_text().splitlines())  # line numbers kept

    resolved = resolve(["--config", str(experiment)])
    assert resolved["trainer"]["max_steps"] == 20 and resolved["trainer"]["log_every_n_steps"] == 5
    assert resolved["trainer"]["logger"]["class_path"] == "lightning.pytorch.loggers.CSVLogger"
    assert resolved["trainer"]["logger"]["init_args"]["name"] == "run"
    assert resolved["trainer"]["logger"]["init_args"]["save_dir"] == "outputs"
    assert "compose" not in resolved
    plain = ["--config", str(tmp_path / "trainer" / "base.yaml"), "--config", '{"trainer": {"max_steps": 3}}']
    assert expand_compose(plain, copies) == plain  # files without compose: and YAML strings stay as they are
    # a later --config or flag overrides the composing file
    later = write(tmp_path / "later.yaml", "trainer:\n  max_steps: 40\n")
    assert resolve(["--config", str(experiment), "--config", str(later)])["trainer"]["max_steps"] == 40
    assert resolve(["--config", str(experiment), "--trainer.max_steps=50"])["trainer"]["max_steps"] == 50


def test_compose_is_expanded_in_the_equals_form_and_in_composed_files(tmp_path):
    write(tmp_path / "trainer" / "base.yaml", "trainer:\n  max_steps: 10\n  log_every_n_steps: 5\n  val_check_interval: 7\n")
    write(tmp_path / "trainer" / "mid.yaml", "compose: [base.yaml]\ntrainer:\n  max_steps: 11\n  log_every_n_steps: 6\n")
    experiment = write(tmp_path / "experiment" / "run.yaml", "compose:\n- ../trainer/mid.yaml\ntrainer:\n  max_steps: 12\n")
    for args in (["--config", str(experiment)], [f"--config={experiment}"]):
        trainer = resolve(args)["trainer"]
        assert (trainer["max_steps"], trainer["log_every_n_steps"], trainer["val_check_interval"]) == (12, 6, 7)
    # a file that only composes others passes nothing of its own; one composed twice is read once
    only = write(tmp_path / "experiment" / "only.yaml", "compose: [../trainer/mid.yaml, ../trainer/base.yaml]\n")
    assert resolve([f"--config={only}"])["trainer"]["max_steps"] == 11


def test_compose_cycle_and_missing_file_end_with_one_line(tmp_path, capsys):
    from lightning_recon.cli import cli_main

    write(tmp_path / "a.yaml", "compose: [sub/b.yaml]\ntrainer:\n  max_steps: 1\n")
    write(tmp_path / "sub" / "b.yaml", "compose: [../a.yaml]\ntrainer:\n  max_steps: 2\n")
    with pytest.raises(SystemExit) as exit_:
        cli_main(["--config", str(tmp_path / "a.yaml"), "--print_config"], run=False)
    error = capsys.readouterr().err
    assert exit_.value.code == 2 and error.count("\n") == 1
    assert error.startswith("train.py: error: compose cycle: ") and "a.yaml -> " in error and "b.yaml -> " in error

    write(tmp_path / "c.yaml", "compose:\n  - ../trainer/missing.yaml\n")
    with pytest.raises(SystemExit) as exit_:
        cli_main([f"--config={tmp_path / 'c.yaml'}", "--print_config"], run=False)
    error = capsys.readouterr().err
    assert exit_.value.code == 2 and error.count("\n") == 1
    assert error.startswith("train.py: error: ") and "composed config ../trainer/missing.yaml not found" in error

    write(tmp_path / "e.yaml", "trainer:\n  max_steps: 3\n")
    write(tmp_path / "d.yaml", '"compose": [e.yaml]\n')  # a spelling the key's removal does not handle
    with pytest.raises(SystemExit):
        cli_main(["--config", str(tmp_path / "d.yaml"), "--print_config"], run=False)
    assert "write compose: as a top-level YAML list" in capsys.readouterr().err


if __name__ == "__main__":
    if sys.argv[1:] != ["--update"]:
        sys.exit("usage: python tests/test_configs.py --update")
    record = {name: explicit_settings(EXPERIMENTS / f"{name}.yaml") for name in experiment_names()}
    RECORD.write_text("# written by `python tests/test_configs.py --update`; see tests/test_configs.py\n"
                      + yaml.safe_dump(record, sort_keys=True, allow_unicode=True, width=120))
    print(f"wrote {RECORD}")
