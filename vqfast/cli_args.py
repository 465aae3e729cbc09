"""The command line's flag types and config files: numbers checked as argparse parses
them, KEY=VALUE settings, and TOML / YAML files whose values go through each flag's own
type and choices."""

import argparse
import math
from pathlib import Path

import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib


def number(flag: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"{flag} takes 'auto' or a number, got {text!r}") from None
    if not math.isfinite(value):
        raise UsageError(f"{flag} takes 'auto' or a number, got {text!r}, which is not finite")
    return value


def _float_in(lo: float, hi: float, what: str):
    """An argparse type: a finite number in (lo, hi)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not (math.isfinite(value) and lo < value < hi):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value
    return parse


positive_float = _float_in(0, math.inf, "a finite number > 0")
percentile = _float_in(0, 100, "a percentile in (0, 100)")


class UsageError(ValueError):
    """A flag or config value that is missing or malformed."""


def need(args, *names) -> None:
    missing = [n for n in names if getattr(args, n, None) in (None, "")]
    if missing:
        raise UsageError(f"missing {', '.join('--' + n.replace('_', '-') for n in missing)} "
                         "(give it on the command line or in the --config file)")


def key_value(text: str):
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    return key.strip().replace("-", "_"), value.strip()


class SetAction(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        current = dict(getattr(namespace, self.dest) or {})
        current[values[0]] = values[1]
        setattr(namespace, self.dest, current)


def _read_config(path) -> dict:
    """A TOML (.toml) or YAML (.yaml/.yml) file of flag names (underscores or dashes)
    and method settings."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the --config file ({exc.strerror})") from None
    try:
        if path.suffix.lower() == ".toml":
            values = tomllib.loads(text)
        elif path.suffix.lower() in (".yaml", ".yml"):
            values = yaml.safe_load(text) or {}
        else:
            raise UsageError(f"{path}: --config takes a .toml, .yaml or .yml file")
    except UsageError:
        raise
    except Exception as exc:  # the parsers' own error types; the message names the line
        raise UsageError(f"{path}: not valid {path.suffix[1:].upper()} ({exc})") from None
    if not isinstance(values, dict):
        raise UsageError(f"{path}: expected a table of settings at the top level")
    return {str(k).replace("-", "_"): v for k, v in values.items()}


def apply_config(args, sub: argparse.ArgumentParser, argv) -> argparse.Namespace:
    """Config values become the defaults of the flags they name (the command line wins);
    other keys are method settings (train) or refused (score, report)."""
    config = _read_config(args.config)
    flags = {a.dest for a in sub._actions}
    known = {k: v for k, v in config.items() if k in flags and k not in ("config", "settings")}
    rest = {k: v for k, v in config.items() if k not in known}
    if rest and "settings" not in flags:
        raise UsageError(f"{args.config}: unknown keys {', '.join(sorted(rest))} for vqfast {args.command}")
    sub.set_defaults(**{k: _config_value(sub, args.config, k, v) for k, v in known.items()})
    new = sub.parse_args(argv[1:])
    new.command, new.func = args.command, args.func
    if "settings" in flags:
        new.settings = {**rest, **(new.settings or {})}
    return new


def _config_value(sub: argparse.ArgumentParser, path, key: str, value):
    """A config file's value for a flag, through the flag's own type and choices (defaults
    set from a file skip argparse's checks): a switch takes only true or false."""
    action = next(a for a in sub._actions if a.dest == key)
    where = f"{path}: {key}"
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if isinstance(value, bool):
            return value
        raise UsageError(f"{where} takes true or false (unquoted), got {value!r}")
    if action.nargs in ("+", "*"):  # a list flag (report's --scores): a list or one value
        values = value if isinstance(value, list) else [value]
        if not values or not all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in values):
            raise UsageError(f"{where} takes a path or a list of paths, got {value!r}")
        return [str(v) for v in values]
    if isinstance(value, (dict, list)) or isinstance(value, bool) and action.type is not None:
        raise UsageError(f"{where} takes a single value, got {value!r}")
    if action.type is not None:
        try:
            value = action.type(str(value))
        except (argparse.ArgumentTypeError, ValueError) as exc:
            raise UsageError(f"{where}: {exc}") from None
    elif value is not None:
        value = str(value)
    if action.choices is not None and value not in action.choices:
        raise UsageError(f"{where} takes one of {', '.join(map(str, action.choices))}, got {value!r}")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value
