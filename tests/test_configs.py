"""The resolved config of every ``configs/experiment/*.yaml`` (``train.py fit --config <it>``) stays
what ``tests/resolved_experiments.yaml`` records: each setting of the trainer (logger and callbacks
included), data, checkpoint and panel blocks that differs from the default of its class. The model
block is not compared. After a deliberate change to an experiment, rewrite the record with
``python tests/test_configs.py --update`` and review its diff.
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
    """The config ``train.py fit <args> --print_config`` prints, as plain data."""
    from lightning_recon.cli import cli_main

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), pytest.raises(SystemExit):
        cli_main([*args, "--print_config"], run=False)
    return yaml.safe_load(printed.getvalue())


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


if __name__ == "__main__":
    if sys.argv[1:] != ["--update"]:
        sys.exit("usage: python tests/test_configs.py --update")
    record = {name: explicit_settings(EXPERIMENTS / f"{name}.yaml") for name in experiment_names()}
    RECORD.write_text("# written by `python tests/test_configs.py --update`; see tests/test_configs.py\n"
                      + yaml.safe_dump(record, sort_keys=True, allow_unicode=True, width=120))
    print(f"wrote {RECORD}")
