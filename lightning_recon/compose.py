"""Command-line arguments of ``train.py`` before LightningCLI reads them: ``compose:`` lists in config
files expanded (``expand_compose``), simulated ellipses chosen when no data class is named
(``with_default_data``), a shipped checkpoint's name after ``--ckpt_path`` replaced by its file
(``with_pretrained_paths``), and the checkpoint's model class when ``--ckpt_path`` is given without
one (``with_checkpoint_model``).

A config file may start from others: a top-level ``compose:`` list of config files (relative to its
own folder) is read first, in order, and the file then overrides them.
"""
from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import List, Optional

from .messages import exit_with_error
from .pretrained import resolve_checkpoint

__all__ = ["CONFIG_OPTIONS", "DEFAULT_DATA_MODULE", "expand_compose", "names_class", "with_checkpoint_model",
           "with_default_data", "with_pretrained_paths"]


CONFIG_OPTIONS = ("--config", "-c")  # LightningCLI's config-file option (on the top level and per subcommand)
_COMPOSE_KEY = re.compile(r"compose\s*:")


def _read_config(path: Path):
    """The YAML mapping in ``path`` (None if unreadable or not a mapping: jsonargparse reports it)."""
    import yaml

    try:
        content = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    return content if isinstance(content, dict) else None


def _without_compose(path: Path, content: dict) -> Optional[str]:
    """The text of ``path`` with its top-level ``compose:`` entry blanked out (other lines, comments
    and line numbers as they were); None when nothing else is left."""
    import yaml

    lines, skipping = [], False
    for line in path.read_text().splitlines(keepends=True):
        if skipping and (not line.strip() or line[0] in " \t-#"):
            lines.append("\n")  # the entry's items, continuation lines and the comments among them
            continue
        skipping = bool(_COMPOSE_KEY.match(line))
        lines.append("\n" if skipping else line)
    text = "".join(lines)
    rest = {key: value for key, value in content.items() if key != "compose"}
    if (yaml.safe_load(text) or {}) != rest:  # any spelling the line edit does not handle
        exit_with_error("train.py", f"{path}: write compose: as a top-level YAML list (compose: [a.yaml, b.yaml] or "
                          "one '- path' per line)")
    return text if rest else None


def expand_compose(args: List[str], folder: Path) -> List[str]:
    """``args`` with every ``--config FILE`` (``--config=FILE``, ``-c FILE``) whose YAML has a
    top-level ``compose:`` list replaced by ``--config`` arguments for the composed files (paths
    relative to ``FILE``'s folder, each expanded the same way, in order) followed by ``FILE``
    without its ``compose:`` entry, written into ``folder``: a later file overrides the earlier
    ones, so ``FILE`` overrides what it composes and a later ``--config`` or flag overrides ``FILE``.
    A file composed twice below one ``--config`` is read once, where first composed; a cycle or a
    missing file ends ``train.py`` with one line. Arguments without ``compose:`` stay as they are."""
    copies = itertools.count()

    def expand(path: Path, chain: List[Path], seen: set) -> List[str]:
        key = path.resolve()
        if key in chain:
            cycle = " -> ".join(str(p) for p in [*chain[chain.index(key):], key])
            exit_with_error("train.py", f"compose cycle: {cycle}")
        if key in seen:
            return []
        seen.add(key)
        content = _read_config(path)
        if content is None or "compose" not in content:
            return [str(path)]
        composed = content["compose"]
        composed = [composed] if isinstance(composed, str) else composed
        if not isinstance(composed, list) or not all(isinstance(entry, str) for entry in composed):
            exit_with_error("train.py", f"{path}: compose: must be a list of config file paths, got {content['compose']!r}")
        out = []
        for entry in composed:
            target = path.parent / Path(entry).expanduser()
            if not target.is_file():
                where = "" if str(target) == entry else f" ({target})"
                exit_with_error("train.py", f"{path}: composed config {entry} not found{where}")
            out += expand(target, [*chain, key], seen)
        text = _without_compose(path, content)
        if text is not None:  # the file's own settings, after those it composes
            copy = folder / str(next(copies)) / path.name
            copy.parent.mkdir()
            copy.write_text(text)
            out.append(str(copy))
        return out

    def files(value: str) -> List[str]:
        path = Path(value)
        return expand(path, [], set()) if path.is_file() else [value]  # a YAML string stays as it is

    out, i = [], 0
    while i < len(args):
        arg = args[i]
        if arg in CONFIG_OPTIONS and i + 1 < len(args):
            out += [item for path in files(args[i + 1]) for item in (arg, path)]
            i += 2
            continue
        option, equals, value = arg.partition("=")
        if equals and option == "--config":
            out += [f"--config={path}" for path in files(value)]
        else:
            out.append(arg)
        i += 1
    return out


DEFAULT_DATA_MODULE = "lightning_recon.data.SimulatedCTDataModule"
SUBCOMMANDS = ("fit", "validate", "test", "predict")


def names_class(args: List[str], key: str) -> bool:
    """Whether ``args`` choose the ``key`` class (``data``, ``model``): ``--key CLASS``,
    ``--key.class_path``, or a config file (or YAML string) with ``key: class_path:``."""
    import yaml

    for i, arg in enumerate(args):
        option = arg.partition("=")[0]
        if option in (f"--{key}", f"--{key}.class_path"):
            return True
        if option in CONFIG_OPTIONS:
            value = arg.partition("=")[2] if "=" in arg else (args[i + 1] if i + 1 < len(args) else "")
            try:
                content = _read_config(Path(value)) if Path(value).is_file() else yaml.safe_load(value)
            except (yaml.YAMLError, OSError, ValueError):
                content = None
            chosen = content.get(key) if isinstance(content, dict) else None
            if isinstance(chosen, str) or (isinstance(chosen, dict) and "class_path" in chosen):
                return True
    return False


def _with_class(args: List[str], key: str, class_path: str, subcommands: bool) -> List[str]:
    """``args`` with ``--key=class_path`` after the subcommand (first without subcommands)."""
    position = next((i for i, a in enumerate(args) if a in SUBCOMMANDS), None)
    if position is None and subcommands:
        return args
    position = -1 if position is None else position
    return [*args[: position + 1], f"--{key}={class_path}", *args[position + 1:]]


def with_default_data(args: List[str], subcommands: bool = True) -> List[str]:
    """``args`` choosing simulated CT data (``SimulatedCTDataModule``) when they name no data class
    (after the subcommand, or first without subcommands). A parser default would carry its settings
    (batch size 32, workers) into a data class a config names; so a data module's defaults stay its own."""
    if names_class(args, "data") or any(a in ("-h", "--help") for a in args):
        return args
    return _with_class(args, "data", DEFAULT_DATA_MODULE, subcommands)


def with_pretrained_paths(args: List[str]) -> List[str]:
    """``args`` with a shipped checkpoint's name after ``--ckpt_path`` replaced by its file."""
    out = list(args)
    for i, arg in enumerate(out):
        if arg == "--ckpt_path" and i + 1 < len(out):
            out[i + 1] = resolve_checkpoint(out[i + 1])
        elif arg.startswith("--ckpt_path="):
            out[i] = "--ckpt_path=" + resolve_checkpoint(arg.partition("=")[2])
    return out


def with_checkpoint_model(args: List[str], subcommands: bool = True) -> List[str]:
    """``args`` choosing the model class ``--ckpt_path``'s checkpoint holds when they name none
    (``train.py predict --ckpt_path run.ckpt --data ...`` needs no model config)."""
    ckpt_path = next((arg.partition("=")[2] if "=" in arg else (args[i + 1] if i + 1 < len(args) else "")
                      for i, arg in enumerate(args) if arg.partition("=")[0] == "--ckpt_path"), None)
    if not ckpt_path or not Path(ckpt_path).is_file() or names_class(args, "model"):
        return args
    from .checkpointing import read_lightning_checkpoint

    try:
        class_path = read_lightning_checkpoint(ckpt_path, mmap=True)["hyper_parameters"]["_class_path"]
    except (ValueError, KeyError, TypeError):  # unreadable or not ours: the CLI's own checks name the problem
        return args
    return _with_class(args, "model", class_path, subcommands)
