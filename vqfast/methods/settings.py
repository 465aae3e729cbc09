"""A method's settings: one dataclass a method, each field with its help and, where the
CPU default departs from the paper, the paper's value.

    @dataclass
    class VQVAESettings(Settings):
        hidden: int = setting(64, "hidden channels", paper=128)

``parse(given)`` builds one from ``--set`` strings, config-file values or a run.json
record, checking each value against the field's type and range; a bad value is a
``SettingError`` naming the setting. ``preset=paper`` gives every setting that has a paper
value that value (what is given still wins). ``record()`` is what run.json stores.
"""

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional


PRESETS = ("cpu", "paper")


class SettingError(ValueError):
    """A setting that does not exist or whose value does not fit it; names the setting."""


def setting(default, help: str, *, paper=None, least: Optional[float] = None, most: Optional[float] = None,
            file: bool = False):
    """A settings field. ``least``: a number's smallest value (whole numbers default to
    1, floats to anything above 0); ``most``: its largest (inclusive); ``file``: a path
    that must name an existing file when given."""
    make = {"default_factory": lambda: list(default)} if isinstance(default, list) else {"default": default}
    return field(**make, metadata={"help": help, "paper": paper, "least": least, "most": most, "file": file})


@dataclass
class Settings:
    """What every method takes (the CLI's own flags). Subclasses add and re-default fields."""

    size: int = setting(128, "image side in pixels")
    channels: int = setting(3, "1 for grey, 3 for colour")
    epochs: int = setting(100, "most epochs to train")
    minutes: float = setting(10.0, "training time budget in minutes")
    batch_size: int = setting(16, "images a training step")
    lr: float = setting(1e-3, "learning rate")
    seed: int = setting(0, "seed of every random draw", least=0)
    val_fraction: float = setting(0.1, "share of the images held out for validation and --threshold auto",
                                  least=0, most=1)
    preset: str = setting("cpu", "cpu (sizes and rates scaled to a CPU budget) or paper (every setting with a "
                          "paper value takes it, unless given)")

    def size_rule(self):
        """(multiple, least) the image side must be."""
        return 1, 1

    def check(self) -> None:
        """Rules across fields; raises SettingError."""

    @classmethod
    def parse(cls, given: Dict[str, object], *, rules: bool = True) -> "Settings":
        """The defaults updated with ``given`` (strings or typed values), each checked;
        ``rules``: also the rules across fields (a run record is read without them: an
        exported run records the settings it was trained with, not this class's rules)."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        if str(given.get("preset", "cpu")) not in PRESETS:
            raise SettingError(f"setting preset: takes {' or '.join(PRESETS)}, got {given['preset']!r}")
        if given.get("preset") == "paper":  # the paper's values under what was given
            given = {**{f.name: f.metadata["paper"] for f in fields.values() if f.metadata.get("paper") is not None},
                     **given}
        unknown = sorted(set(given) - set(fields))
        if unknown:
            raise SettingError(f"no setting {', '.join(unknown)} (there are: {', '.join(sorted(fields))})")
        hints = typing.get_type_hints(cls)
        values = {k: coerce(k, v, hints[k], fields[k]) for k, v in given.items()}
        settings = cls(**values)
        if not rules:
            return settings
        step, least = settings.size_rule()
        if settings.size % step or settings.size < least:
            raise SettingError(f"size: the images' side must be a multiple of {step}"
                               f"{f' and at least {least}' if least > step else ''}, got --size {settings.size}: "
                               f"pass e.g. --size {max(least, (settings.size + step - 1) // step * step)}")
        if settings.val_fraction == 1:
            raise SettingError("val_fraction takes a fraction in [0, 1): some images must train")
        if settings.channels not in (1, 3):
            raise SettingError(f"--channels takes 1 (grey) or 3 (colour), got {settings.channels}")
        for f in dataclasses.fields(cls):  # weight files: checked now, not after run.json says "training"
            value = getattr(settings, f.name)
            if f.metadata.get("file") and value is not None and not Path(str(value)).is_file():
                raise SettingError(f"setting {f.name}: {value} is not a file (a weights file the method loads)")
        settings.check()
        return settings

    def record(self) -> Dict[str, object]:
        return dataclasses.asdict(self)

    @classmethod
    def describe(cls, own: bool = False) -> List[str]:
        """One entry a setting: name=default, the paper's value where it differs, and
        help. ``own``: only the settings the method adds or re-defaults."""
        base = {f.name: f for f in dataclasses.fields(Settings)}
        out = []
        for f in dataclasses.fields(cls):
            default = _default(f)
            paper = f.metadata.get("paper")
            if own and f.name in base and _default(base[f.name]) == default and paper is None:
                continue
            out.append(f"{f.name}={default}" + (f" (paper: {paper})" if paper is not None else "")
                       + f": {f.metadata.get('help', '')}")
        return out


def _default(spec: dataclasses.Field):
    return spec.default_factory() if spec.default is dataclasses.MISSING else spec.default


def coerce(key: str, value, kind, spec: dataclasses.Field):
    """``value`` as ``kind`` (bool, int, float, str, Optional[...] or List[...]), in the
    field's range. Whole numbers are >= 1 unless the field says otherwise; floats finite."""
    if typing.get_origin(kind) is typing.Union:  # Optional[X]: None stays None
        if value is None:
            return None
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
    try:
        if typing.get_origin(kind) in (list, List):
            default = _default(spec)
            parts = value if isinstance(value, list) else str(value).split(",")
            if len(parts) != len(default):
                raise SettingError(f"setting {key}: takes {len(default)} comma-separated values like "
                                   f"{','.join(map(str, default))}, got {value!r}")
            return [coerce(key, p, typing.get_args(kind)[0], spec) for p in parts]
        if kind is bool:
            if isinstance(value, bool):
                return value
            if str(value).strip().lower() in ("true", "false"):
                return str(value).strip().lower() == "true"
            raise ValueError
        if kind is int:
            number = _number(value)
            least = 1 if spec.metadata.get("least") is None else spec.metadata["least"]
            if not number.is_integer() or number < least:
                raise SettingError(f"setting {key}: takes a whole number >= {least}, got {value!r}")
            return int(number)
        if kind is float:
            number = _number(value)
            least, most = spec.metadata.get("least"), spec.metadata.get("most")
            if (number < least if least is not None else number <= 0) or (most is not None and number > most):
                span = f"[{least}" if least is not None else "(0"
                raise SettingError(f"setting {key}: takes a number in {span}, {'inf)' if most is None else f'{most}]'}, "
                                   f"got {value!r}")
            return number
        if kind is str:
            if isinstance(value, (dict, list, bool)):
                raise ValueError
            return str(value)
    except SettingError:
        raise
    except (TypeError, ValueError, OverflowError):
        raise SettingError(f"setting {key}: expected a finite value like {_default(spec)!r}, got {value!r}") from None
    return value


def _number(value) -> float:
    if isinstance(value, bool):
        raise ValueError("a boolean is not a number")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError("not finite")
    return number
