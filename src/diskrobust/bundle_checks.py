"""Checks for every `python -m monai.bundle run ...` of the project, and readable errors.

MONAI's `run` writes command-line overrides into the config without asking whether the id exists, so
a misspelt `--epoch 1` or `--ind#stesp 5` is silently ignored and the run goes on with the defaults.
`check_command_line()` is the first expression of a bundle's `initialize`; it reads the command line
the way `fire` (behind `python -m monai.bundle`) reads it, loads the config files named by
`--config_file` and refuses, before any work, every override whose id is not in them (naming the
closest valid ids), a run id that does not exist and values of the wrong type (a boolean setting
given `maybe`, a number given a word). Created programmatically (`ConfigWorkflow(...)` in tests or
notebooks) it does nothing unless given `argv` or `force=True`.

`install_error_printer()` (called when this module is imported, i.e. by the bundles' `imports`)
makes a failed run end with the project's own message: MONAI wraps errors raised while resolving a
config in "Failed to evaluate ConfigExpression"; the hook prints the full traceback as Python does,
then the `DataError` / `ConfigError` found in the exception chain as the last line.

`as_bool` and `check_number` are the one place settings are converted: `--progress false` reaches a
config as the string "false", which plain `bool()` would take as true.
"""

from __future__ import annotations

import ast
import difflib
import math
import os
import sys
import traceback
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diskrobust.data.errors import PROJECT_ERRORS, ConfigError

__all__ = [
    "MONAI_RUN_ARGS",
    "as_bool",
    "check_number",
    "BundleCommand",
    "parse_bundle_command",
    "closest",
    "config_ids",
    "check_overrides",
    "check_command_line",
    "project_error",
    "install_error_printer",
]

# Arguments of `monai.bundle.scripts.run` (positional in this order) and the other keywords that
# `create_workflow` / `ConfigWorkflow` consume: they are not config overrides.
MONAI_RUN_ARGS = ("run_id", "init_id", "final_id", "meta_file", "config_file", "logging_file", "tracking",
                  "args_file")
_WORKFLOW_ARGS = ("workflow_name", "workflow_type", "properties_path")
# Keys MONAI itself understands inside a config item (may be added to an existing component).
_MONAI_SPECIAL_KEYS = ("_target_", "_disabled_", "_requires_", "_desc_", "_mode_")
_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


# ---------------------------------------------------------------------------------------- values


def as_bool(value: Any, setting: str = "value") -> bool:
    """A boolean setting, strictly: True/False, 1/0, or the words true/false, yes/no, on/off (any case).

    Anything else (another number, "maybe", None, a list) raises ConfigError naming `setting`, so a
    value never counts as true just because it is not empty.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    raise ConfigError(None, setting, f"expected true or false, got {value!r}")


def check_number(value: Any, setting: str, *, minimum: float | None = None, maximum: float | None = None,
                 min_inclusive: bool = True, max_inclusive: bool = True, integer: bool = False) -> float | int:
    """A finite number (an int when `integer`) within [minimum, maximum] (bounds open when not inclusive).

    Booleans and numeric strings are refused: a setting is a number or it is wrong. Raises ConfigError
    naming `setting` and the allowed range.
    """
    def bounds() -> str:
        lo = "" if minimum is None else f"{minimum:g} {'<=' if min_inclusive else '<'} "
        hi = "" if maximum is None else f" {'<=' if max_inclusive else '<'} {maximum:g}"
        return f"{lo}{setting}{hi}" if (lo or hi) else "finite"

    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(None, setting, f"expected {kind} ({bounds()}), got {value!r}")
    if not math.isfinite(value):
        raise ConfigError(None, setting, f"expected a finite number, got {value!r}")
    if integer:
        if int(value) != value:
            raise ConfigError(None, setting, f"expected an integer, got {value!r}")
        value = int(value)
    too_low = minimum is not None and (value < minimum or (not min_inclusive and value == minimum))
    too_high = maximum is not None and (value > maximum or (not max_inclusive and value == maximum))
    if too_low or too_high:
        raise ConfigError(None, setting, f"must satisfy {bounds()}, got {value!r}")
    return value


# -------------------------------------------------------------------------------- the command line


@dataclass
class BundleCommand:
    """A `python -m monai.bundle run ...` command line as fire hands it to `monai.bundle.scripts.run`."""

    run_args: dict[str, Any] = field(default_factory=dict)   # run_id, config_file, ... (see MONAI_RUN_ARGS)
    overrides: dict[str, Any] = field(default_factory=dict)  # config id -> value (parsed like fire does)
    spelled: dict[str, str] = field(default_factory=dict)    # config id -> how it was typed, for messages

    @property
    def config_files(self) -> list[str]:
        return _file_list(self.run_args.get("config_file"))


def _parse_value(text: str) -> Any:
    """A command-line value the way fire parses it (Python literals; bare words stay strings)."""
    try:
        from fire.parser import DefaultParseValue
    except ImportError:  # fire is what `python -m monai.bundle` runs on; keep a fallback for safety
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return text
    return DefaultParseValue(text)


def _is_flag(token: str) -> bool:
    # fire: "--x" or "-x"; a negative number is a value
    if token.startswith("--"):
        return True
    if token.startswith("-") and len(token) > 1 and token[1].isalpha():
        return True
    return False


def _file_list(value: Any) -> list[str]:
    """`--config_file` as MONAI reads it: one path, a list of paths, or paths joined by commas."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    text = str(value)
    if not Path(text).is_file() and "," in text:
        return [part.strip() for part in text.split(",") if part.strip()]
    return [text]


def is_bundle_run(argv: Sequence[str] | None = None) -> bool:
    """True when this process is `python -m monai.bundle run ...`."""
    argv = sys.argv if argv is None else argv
    if len(argv) < 2:
        return False
    main = Path(argv[0])
    return main.name == "__main__.py" and main.parent.name == "bundle" and main.parent.parent.name == "monai" \
        and argv[1] == "run"


def parse_bundle_command(argv: Sequence[str]) -> BundleCommand:
    """Split `run [positional ...] --key value --key=value --flag ...` (tokens after `run`) like fire.

    Positional tokens fill run_id, init_id, ... in `monai.bundle.scripts.run`'s order; a flag without a
    value (followed by another flag or the end) is True; everything after an isolated `--` is fire's own.
    """
    tokens = list(argv)
    if "--" in tokens:
        tokens = tokens[: tokens.index("--")]
    cmd = BundleCommand()
    positional: list[str] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if not _is_flag(token):
            positional.append(token)
            i += 1
            continue
        stripped = token.lstrip("-")
        if "=" in stripped:
            key, raw = stripped.split("=", 1)
            i += 1
        elif i + 1 == len(tokens) or _is_flag(tokens[i + 1]):
            key, raw = stripped, "True"
            i += 1
        else:
            key, raw = stripped, tokens[i + 1]
            i += 2
        key = key.replace("-", "_")  # fire's spelling rule
        value = _parse_value(raw)
        if key in MONAI_RUN_ARGS or key in _WORKFLOW_ARGS:
            cmd.run_args[key] = value
        else:
            cmd.overrides[key] = value
            cmd.spelled[key] = token if "=" in stripped else f"{token} {raw}"
    for name, value in zip(MONAI_RUN_ARGS, positional):
        cmd.run_args.setdefault(name, _parse_value(value))
    if len(positional) > len(MONAI_RUN_ARGS):
        raise ConfigError("command line", "positional arguments",
                          f"too many: {positional[len(MONAI_RUN_ARGS):]}",
                          "give settings as --id value")
    args_file = cmd.run_args.get("args_file")
    if args_file:
        from monai.bundle import ConfigParser

        defaults = ConfigParser.load_config_file(str(args_file))
        for key, value in defaults.items():
            if key in MONAI_RUN_ARGS or key in _WORKFLOW_ARGS:
                cmd.run_args.setdefault(key, value)
            elif key not in cmd.overrides:
                cmd.overrides[key] = value
                cmd.spelled[key] = f"{key} (in {args_file})"
    return cmd


# --------------------------------------------------------------------------------------- the ids


def _normalise_id(key: str) -> str:
    return key.replace("::", "#")


def config_ids(config: Any, prefix: str = "") -> dict[str, Any]:
    """Every id of a config (nested dict keys and list indices joined by '#') -> its value."""
    out: dict[str, Any] = {}
    if isinstance(config, Mapping):
        items = ((str(k), v) for k, v in config.items())
    elif isinstance(config, list):
        items = ((str(i), v) for i, v in enumerate(config))
    else:
        return out
    for key, value in items:
        cid = f"{prefix}#{key}" if prefix else key
        out[cid] = value
        out.update(config_ids(value, cid))
    return out


def _in_component(cid: str, ids: Mapping[str, Any]) -> bool:
    """Whether an id lies inside a `_target_` component (its value goes to a constructor as is)."""
    parts = cid.split("#")
    for n in range(1, len(parts)):
        parent = ids.get("#".join(parts[:n]))
        if isinstance(parent, Mapping) and "_target_" in parent:
            return True
    return False


def _is_reference(value: Any) -> bool:
    return isinstance(value, str) and value[:1] in ("$", "@", "%")


def _type_problem(cid: str, default: Any, value: Any, ids: Mapping[str, Any],
                  also: Mapping[str, Sequence[Any]] | None = None) -> str | None:
    """Why `value` cannot replace `default` (None when it can): the type a config's default implies."""
    if _is_reference(value) or _is_reference(default) or default is None:
        return None
    extra = list(also.get(cid, [])) if also else []
    if any(value == v if v is not None else value is None for v in extra):
        return None
    # the values the id takes besides its type's, named in the message (e.g. "or 'auto'")
    alternatives = "".join(f" or {v!r}" for v in extra)
    if isinstance(default, bool):
        if isinstance(value, bool):
            return None
        if _in_component(cid, ids):
            # a constructor would take the string "false" as true
            return (f"expects True or False{alternatives}, got {value!r} (this value goes to a constructor "
                    f"unconverted: write True or False)")
        try:
            as_bool(value, cid)
        except ConfigError:
            return f"expects true or false{alternatives}, got {value!r}"
        return None
    if isinstance(default, (int, float)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"expects a number{alternatives}, got {value!r}"
        return None
    if isinstance(default, list) and not isinstance(value, (list, tuple)):
        return f"expects a list like {default!r}, got {value!r}"
    if isinstance(default, Mapping) and not isinstance(value, Mapping):
        return f"expects a dict, got {value!r}"
    return None


def closest(key: str, candidates: Iterable[str]) -> list[str]:
    candidates = sorted(set(candidates))
    found = difflib.get_close_matches(key, candidates, n=3, cutoff=0.6)
    if "#" in key:  # a nested id: compare its last part with its siblings too (ind#stesp -> ind#steps)
        parent, last = key.rsplit("#", 1)
        siblings = [c for c in candidates if c.startswith(parent + "#") and "#" not in c[len(parent) + 1:]]
        near = difflib.get_close_matches(last, [c[len(parent) + 1:] for c in siblings], n=3, cutoff=0.5)
        found = [f"{parent}#{n}" for n in near] + [f for f in found if f not in {f"{parent}#{n}" for n in near}]
    return found[:3]


def check_overrides(overrides: Mapping[str, Any], config: Mapping[str, Any], *, source: str = "the config",
                    retired: Mapping[str, str] | None = None, spelled: Mapping[str, str] | None = None,
                    run_id: str | None = None, also: Mapping[str, Sequence[Any]] | None = None) -> None:
    """Refuse overrides whose id is not in `config` (or whose value has the wrong type), and a missing run id.

    Args:
        overrides: id -> value as given (ids with '#' or '::').
        config: the merged config the overrides apply to (the files' content, without overrides).
        source: how the config is named in messages (its files).
        retired: id -> what to do instead, for settings that existed once (refused with that advice).
        spelled: id -> how the user typed it, for messages.
        run_id: the id `run` will execute; it must exist.
        also: id -> values it takes besides those of its default's type, e.g. `{"num_samples": [None]}`
            (None: every sample) or `{"micro_batch": ["auto"]}`.

    Raises ConfigError listing every problem, with the closest valid ids for unknown ones.
    """
    retired = dict(retired or {})
    spelled = dict(spelled or {})
    ids = config_ids(config)
    problems: list[str] = []
    unknown: list[str] = []
    for key, value in overrides.items():
        cid = _normalise_id(str(key))
        shown = spelled.get(key, f"--{key}")
        if cid.startswith("_meta_"):
            continue
        root = cid.split("#", 1)[0]
        if cid in retired or root in retired:
            problems.append(f"`{shown}`: '{cid}' is no longer a setting: {retired.get(cid, retired.get(root))}")
            continue
        if cid not in ids:
            parent = cid.rsplit("#", 1)[0] if "#" in cid else None
            if parent is not None and parent in ids and cid.rsplit("#", 1)[1] in _MONAI_SPECIAL_KEYS:
                continue
            near = closest(cid, list(ids) + list(retired))
            hint = f"closest: {', '.join(repr(n) for n in near)}" if near else "no similar setting"
            for n in near:
                if n in retired:
                    hint += f"; '{n}' is no longer a setting: {retired[n]}"
            problems.append(f"`{shown}`: unknown setting '{cid}' ({hint})")
            unknown.append(cid)
            continue
        problem = _type_problem(cid, ids[cid], value, ids, also=also)
        if problem:
            problems.append(f"`{shown}`: '{cid}' {problem}")
    if run_id is not None and str(run_id) not in ids:
        runnable = [k for k, v in ids.items() if "#" not in k and isinstance(v, list)
                    and all(isinstance(x, str) and x.startswith("$") and not x.startswith(("$import", "$from"))
                            for x in v) and v]
        near = difflib.get_close_matches(str(run_id), runnable, n=3, cutoff=0.5)
        problems.append(f"run id '{run_id}' is not in the config (runnable ids: {runnable}"
                        f"{'; closest: ' + repr(near[0]) if near else ''})")
    if problems:
        raise ConfigError(source, "; ".join(dict.fromkeys(unknown)) if unknown else "", " | ".join(problems),
                          "Nothing was run. Check the spelling against the bundle's docs/README.md "
                          "(every setting is an id of its config files).")


def check_command_line(argv: Sequence[str] | None = None, *, retired: Mapping[str, str] | None = None,
                       also: Mapping[str, Sequence[Any]] | None = None, force: bool = False) -> None:
    """Check this `python -m monai.bundle run` command line before any work (see the module docstring).

    Args:
        argv: the full command line (default `sys.argv`). Given explicitly, it is checked whatever it is.
        retired: id -> advice, for settings that were removed (e.g. a second config layer).
        also: id -> values it takes besides those of its default's type (see `check_overrides`).
        force: check `sys.argv` even when this process is not `python -m monai.bundle run`.

    Does nothing when the bundle was created programmatically (argv None, not a bundle run, not forced).
    """
    explicit = argv is not None
    argv = list(sys.argv if argv is None else argv)
    if not (explicit or force or is_bundle_run(argv)):
        return
    tokens = argv[1:]
    if tokens and tokens[0] == "run":
        tokens = tokens[1:]
    cmd = parse_bundle_command(tokens)
    files = cmd.config_files
    if not files:
        raise ConfigError("command line", "config_file", "no config file given",
                          "give --config_file bundles/<bundle>/configs/<file>.json")
    from monai.bundle import ConfigParser

    missing = [f for f in files if not Path(f).is_file()]
    if missing:
        raise ConfigError("command line", "config_file", f"no such file(s): {missing} (current folder {os.getcwd()})")
    config = ConfigParser.load_config_files(files)
    source = " + ".join(files)
    check_overrides(cmd.overrides, config, source=source, retired=retired, spelled=cmd.spelled,
                    run_id=cmd.run_args.get("run_id", "run"), also=also)


# ------------------------------------------------------------------------------------------ errors


def project_error(exc: BaseException | None) -> BaseException | None:
    """The first DataError / ConfigError in `exc`'s chain (itself, its causes and contexts), or None."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        err = todo.pop(0)
        if err is None or id(err) in seen:
            continue
        seen.add(id(err))
        if isinstance(err, PROJECT_ERRORS):
            return err
        todo += [err.__cause__, err.__context__]
    return None


def _print_with_project_error(exc_type, exc, tb, previous=None) -> None:
    (previous or sys.__excepthook__)(exc_type, exc, tb)
    found = project_error(exc)
    if found is None or found is exc and exc.__cause__ is None and exc.__context__ is None:
        return  # Python's own last line already is the project's message
    try:
        sys.stdout.flush()
    except Exception:  # a closed stdout must not hide the message
        pass
    print(f"\nerror ({type(found).__name__}; the traceback above has the details):\n{found}", file=sys.stderr)
    sys.stderr.flush()


def install_error_printer() -> None:
    """Make uncaught errors end with the project's message (idempotent; other errors print as usual)."""
    current = sys.excepthook
    if getattr(current, "_diskrobust", False):
        return
    if os.environ.get("DISKROBUST_DEBUG") == "plain":
        return  # the plain Python output, e.g. for debugging the printer itself

    def hook(exc_type, exc, tb):
        try:
            _print_with_project_error(exc_type, exc, tb, previous=current)
        except Exception:  # never lose the original error to a bug in the printer
            traceback.print_exception(exc_type, exc, tb)

    hook._diskrobust = True  # type: ignore[attr-defined]
    sys.excepthook = hook


install_error_printer()
