"""What `rnnsent tune` searches: a search space of existing settings, each range or choice checked by the setting's
own rule (rnnsent.config.check_setting), written as text, a small JSON/YAML file, or the default per cell.

    lr=1e-4:1e-2:log hidden_size=64,100,128,256 dropout=0:0.5 layers=1,2 bidirectional

name=low:high is a range (whole numbers for a whole-number setting), low:high:log a log range, a,b,c choices, a
single value a fixed setting, a bare boolean name both of its values. A name is a setting (hidden_size), or one of
its flags' names (layers for --layers); `dropout` is embed_dropout and output_dropout at one value. Plain Python,
no Optuna: a trial is anything with suggest_float/suggest_int/suggest_categorical (Optuna's Trial).
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

from rnnsent.config import (SETTINGS, DataConfig, ModelConfig, OptimConfig, canonical_cell, canonical_encoding,
                            check_setting, setting_kind)

# One name, several settings at one value: the recipes move embedding and output dropout together.
TIED = {"dropout": ("embed_dropout", "output_dropout")}
# What a search may vary: what is learned and how. Not the data's split or its source, the metric, the number of
# classes (the data's), a pretrained start, nor the machinery: trials must be scored on the same validation split.
SEARCHABLE = ({f.name for f in dataclasses.fields(ModelConfig)} - {"num_classes"}
              | {f.name for f in dataclasses.fields(OptimConfig)} - {"monitor", "pretrained"}
              | {"max_len", "encoding", "vocab_size"})
# Settings that change how the data is prepared: a trial that varies one prepares its own (cached) data.
DATA_SETTINGS = {f.name for f in dataclasses.fields(DataConfig)} | {"vocab_size"}
MAX_FILE_BYTES = 64 * 1024  # a space file is a few lines

_COMMON = ("lr=1e-4:1e-2:log hidden_size=32,64,100,128,256 embed_dim=16,32,64,128 dropout=0:0.5 word_dropout=0:0.3 "
           "weight_decay=0,0.001,0.01,0.1 batch_size=32,64,128")
# The default space per cell: SimpleRNN diverges at learning rates GRU and LSTM take.
DEFAULT_SPACE = {"gru": _COMMON, "lstm": _COMMON, "rnn": _COMMON.replace("lr=1e-4:1e-2:log", "lr=1e-4:3e-3:log")}


class SpaceError(ValueError):
    """A search space that names no setting, names one twice, or holds a value its setting refuses."""


@dataclasses.dataclass(frozen=True)
class Param:
    """One name of the space: a range (low, high, log), choices, or one fixed value; `settings` it sets."""

    name: str
    settings: tuple[str, ...]
    kind: str  # "int", "float", "bool" or "str": the settings' type
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple | None = None  # choices; one of them: a fixed value

    @property
    def fixed(self) -> bool:
        return self.choices is not None and len(self.choices) == 1

    def text(self) -> str:
        if self.choices is not None:
            return f"{self.name}={','.join(map(_show, self.choices))}"
        return f"{self.name}={_show(self.low)}:{_show(self.high)}" + (":log" if self.log else "")

    def suggest(self, trial):
        """This parameter's value in `trial` (Optuna's Trial): sampled, or the fixed value."""
        if self.fixed:
            return self.choices[0]
        if self.choices is not None:
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, log=self.log)


@dataclasses.dataclass(frozen=True)
class Space:
    params: tuple[Param, ...]

    def text(self) -> str:
        """The space as --space text: what the study records, and reads back the same."""
        return " ".join(p.text() for p in self.params)

    def settings(self) -> set[str]:
        return {s for p in self.params for s in p.settings}

    def varies_data(self) -> bool:
        return bool(self.settings() & DATA_SETTINGS)

    def suggest(self, trial) -> dict:
        """The settings of one trial: {setting: value} for every name of the space."""
        values = {}
        for p in self.params:
            value = p.suggest(trial)
            values.update({s: value for s in p.settings})
        return values


def _show(value) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else f"{value:g}" if isinstance(
        value, float) else str(value)


def _names() -> dict[str, str]:
    """Every setting by its own name and by its flags' names (--layers: num_layers, --data: data_root)."""
    names = {}
    for name, field in SETTINGS.items():
        names[name] = name
        for flag in field.metadata.get("flags") or ():
            names.setdefault(flag.lstrip("-").replace("-", "_"), name)
    return names


def _settings_of(name: str) -> tuple[str, ...]:
    key = name.strip().replace("-", "_")
    if key in TIED:
        return TIED[key]
    setting = _names().get(key)
    if setting is None:
        raise SpaceError(f"--space: {name} is not a setting (see rnnsent train --help; dropout sets embed_dropout and "
                         "output_dropout together)")
    if setting not in SEARCHABLE:
        raise SpaceError(f"--space: {name} cannot be searched: only the model's and the optimiser's settings, "
                         "vocab_size, max_len and encoding can (the data, the metric and the machine stay fixed)")
    return (setting,)


def _value(name: str, setting: str, text):
    """A value of `setting` from text (or from JSON/YAML, already typed), checked by the setting's rule."""
    kind = setting_kind(SETTINGS[setting])[0]
    value = text
    if isinstance(text, str):
        word = text.strip()
        if kind == "bool":
            value = {"true": True, "on": True, "yes": True, "1": True,
                     "false": False, "off": False, "no": False, "0": False}.get(word.lower(), word)
        elif kind in ("int", "float"):
            try:
                value = int(word) if kind == "int" and not any(c in word for c in ".eE") else float(word)
            except ValueError:
                value = word
            if kind == "int" and isinstance(value, float) and value.is_integer():
                value = int(value)
        else:
            value = word
    elif kind == "float" and isinstance(text, int) and not isinstance(text, bool):
        value = float(text)
    try:
        if setting in ("cell", "encoding") and isinstance(value, str):  # Keras' cell names, the old encoding name
            value = canonical_cell(value) if setting == "cell" else canonical_encoding(value, warn=False)
        return check_setting(setting, value, SpaceError)
    except ValueError as e:  # SpaceError, or an unknown cell or encoding
        raise SpaceError(f"--space {name}: {e}") from None


def _checked(name: str, settings: tuple[str, ...], text) -> object:
    """The value for every setting of `name` (the same for each; each setting's rule holds it)."""
    values = [_value(name, s, text) for s in settings]
    return values[0]


def parse_param(name: str, spec) -> Param:
    """One entry of a space: name and its text ("1e-4:1e-2:log", "64,128", "0.3", "" for a bare boolean), or a
    JSON/YAML value (a list of choices, a number, a bool, a string, or {low, high, log})."""
    settings = _settings_of(name)
    kind = setting_kind(SETTINGS[settings[0]])[0]
    key = settings[0] if len(settings) == 1 else name.strip().replace("-", "_")  # the study's name for it
    if isinstance(spec, dict):
        unknown = set(spec) - {"low", "high", "log"}
        if unknown or not {"low", "high"} <= set(spec):
            raise SpaceError(f"--space {name}: a range is {{low, high}} with an optional log, got {json.dumps(spec)}")
        return _range(key, settings, kind, spec["low"], spec["high"], bool(spec.get("log", False)))
    if isinstance(spec, (list, tuple)):
        return _choices(key, settings, kind, list(spec))
    if not isinstance(spec, str):
        return _choices(key, settings, kind, [spec])
    if spec == "":
        if kind != "bool":
            raise SpaceError(f"--space {name}: give its values ({name}=LOW:HIGH, {name}=A,B or {name}=VALUE); only a "
                             "boolean setting may stand alone")
        return _choices(key, settings, kind, [False, True])
    if ":" in spec and kind in ("int", "float"):
        parts = spec.split(":")
        if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2].strip().lower() != "log"):
            raise SpaceError(f"--space {name}={spec}: a range is LOW:HIGH or LOW:HIGH:log")
        return _range(key, settings, kind, parts[0], parts[1], len(parts) == 3)
    return _choices(key, settings, kind, spec.split(","))


def _range(name, settings, kind, low, high, log) -> Param:
    if kind not in ("int", "float"):
        raise SpaceError(f"--space {name}: {settings[0]} is not a number; give its choices as {name}=A,B")
    low, high = _checked(name, settings, low), _checked(name, settings, high)
    if not low < high:
        raise SpaceError(f"--space {name}={_show(low)}:{_show(high)} is an empty range: the low end must be below the "
                         f"high end (a fixed value is {name}={_show(low)})")
    if log and low <= 0:
        raise SpaceError(f"--space {name}={_show(low)}:{_show(high)}:log: a log range must start above 0")
    if not (math.isfinite(low) and math.isfinite(high)):
        raise SpaceError(f"--space {name}: a range must have finite ends")
    return Param(name, settings, kind, low, high, log)


def _choices(name, settings, kind, items) -> Param:
    if not items or any(isinstance(i, str) and not i.strip() for i in items):
        raise SpaceError(f"--space {name}: an empty choice (write {name}=A,B,C)")
    values = [_checked(name, settings, i) for i in items]
    if len(set(values)) != len(values):
        raise SpaceError(f"--space {name}: a choice is named twice ({','.join(map(_show, values))})")
    return Param(name, settings, kind, choices=tuple(values))


def _entries(text: str) -> list[tuple[str, object]]:
    """(name, spec) pairs of --space text, or of the JSON/YAML file it names."""
    path = Path(text)
    if text.lower().endswith((".json", ".yaml", ".yml")):
        return _file_entries(path)
    pairs = []
    for word in text.split():
        name, _, spec = word.partition("=")
        if not name:
            raise SpaceError(f"--space: {word!r} names no setting (write name=LOW:HIGH, name=A,B or name=VALUE)")
        pairs.append((name, spec))
    return pairs


def _file_entries(path: Path) -> list[tuple[str, object]]:
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise SpaceError(f"--space {path}: more than {MAX_FILE_BYTES // 1024} KiB; a space is a few lines")
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise SpaceError(f"--space {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise SpaceError(f"--space {path}: not UTF-8 text") from None
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml  # PyYAML comes with Optuna

            data = yaml.safe_load(text)
    except Exception as e:  # json's and yaml's errors: the first line says where
        raise SpaceError(f"--space {path}: not valid {path.suffix.lstrip('.').upper()}: "
                         f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if not isinstance(data, dict) or not data:
        raise SpaceError(f"--space {path}: expected a mapping of setting names to ranges or choices")
    return [(str(k), "" if v is None else v) for k, v in data.items()]


def parse_space(text: str | None, cell: str = "gru") -> Space:
    """The space `text` says (--space text, or a .json/.yaml/.yml file), or the default for `cell` when None.
    Raises SpaceError (one line) for an unknown name, a name or setting given twice, a value a setting refuses,
    or an empty range."""
    pairs = _entries(DEFAULT_SPACE[cell] if text is None else text)
    if not pairs:
        raise SpaceError("--space is empty: name at least one setting (see docs/tuning.md)")
    params, seen = [], {}
    for name, spec in pairs:
        param = parse_param(name, spec)
        for s in param.settings:
            if s in seen:
                also = "" if seen[s] == name else f" (as {seen[s]} and as {name})"
                raise SpaceError(f"--space names {s} twice{also}; give each setting once")
            seen[s] = name
        params.append(param)
    if not any(not p.fixed for p in params):
        raise SpaceError("--space fixes every setting it names: give at least one range or choice to search")
    return Space(tuple(params))
