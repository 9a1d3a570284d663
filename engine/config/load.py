"""Load and validate the whole configuration in one pass, then check cross-references.

Every problem is collected with its file:line:col; nothing starts on an invalid configuration.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError as PydanticError

from engine.config.channels import ChannelSettings
from engine.config.kinds import SETTINGS_MODELS
from engine.config.engine import EngineSettings
from engine.config.problems import Problems
from engine.config.yamlfile import MissingVariable, YamlSyntaxError, expand_env, load_yaml, locate, position
from engine.errors import ConfigurationError


@dataclass
class Config:
    root: Path
    engine: EngineSettings
    channels: dict[str, ChannelSettings]
    routes: list = field(default_factory=list)

    def channels_of_type(self, *types: str) -> list[ChannelSettings]:
        return [c for c in self.channels.values() if c.type in types]


def load_config(root: Path, environ=None) -> Config:
    """Read `root`/pfi.yaml, channels/*.yaml and routes.yaml; raise ConfigurationError listing
    every problem found."""
    root = Path(root)
    problems = Problems()
    engine = _load_engine(root / "pfi.yaml", problems, environ)
    channels = _load_channels(root / "channels", problems, environ)
    from engine.config.routes import load_routes  # routes need the channel table

    routes = load_routes(root / "routes.yaml", channels, root, problems)
    if problems:
        raise ConfigurationError(problems.sorted())
    return Config(root=root, engine=engine, channels=channels, routes=routes)


def _read(path: Path, problems: Problems):
    try:
        return load_yaml(path)
    except YamlSyntaxError as exc:
        problems.add(path, exc.position, str(exc))
    except (OSError, UnicodeDecodeError) as exc:
        problems.add(path, (1, 1), f"cannot read: {exc}")
    return None


def validate_model(model, data, path: Path, tree, problems: Problems, environ=None):
    """Validate `data` (a YAML mapping) with pydantic; report errors where they are written."""
    try:
        expanded = expand_env(_plain(data), environ)
    except MissingVariable as exc:
        problems.add(path, position(tree), str(exc))
        return None
    try:
        return model.model_validate(expanded)
    except PydanticError as exc:
        for err in exc.errors():
            loc = tuple(err["loc"])
            where = ".".join(str(p) for p in loc) or "(top)"
            problems.add(path, locate(tree, loc), f"{where}: {_message(err)}")
        return None


def _message(err) -> str:
    if err["type"] == "extra_forbidden":
        return "unknown setting"
    if err["type"] == "missing":
        return "required setting missing"
    return err["msg"].removeprefix("Value error, ")


def _plain(value):
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _load_engine(path: Path, problems: Problems, environ) -> EngineSettings:
    if not path.exists():
        return EngineSettings()
    tree = _read(path, problems)
    if tree is None:
        return EngineSettings()
    return validate_model(EngineSettings, tree, path, tree, problems, environ) or EngineSettings()


def _load_channels(directory: Path, problems: Problems, environ) -> dict[str, ChannelSettings]:
    channels: dict[str, ChannelSettings] = {}
    seen: dict[str, Path] = {}
    for path in sorted(directory.glob("*.y*ml")) if directory.is_dir() else []:
        settings = _load_channel(path, problems, environ)
        if settings is None:
            continue
        if settings.name in seen:
            problems.add(path, (1, 1), f"channel name {settings.name!r} already used by {seen[settings.name]}")
            continue
        seen[settings.name] = path
        channels[settings.name] = settings
    return channels


def _load_channel(path: Path, problems: Problems, environ) -> ChannelSettings | None:
    tree = _read(path, problems)
    if tree is None:
        return None
    if not isinstance(tree, dict):
        problems.add(path, (1, 1), "a channel file must be a mapping of settings")
        return None
    kind = str(tree.get("type"))
    model = SETTINGS_MODELS.get(kind)
    if model is None:
        known = ", ".join(sorted(SETTINGS_MODELS))
        problems.add(path, position(tree, "type"), f"type: unknown channel type {kind!r} (known: {known})")
        return None
    data = dict(tree)
    data.setdefault("name", path.stem)
    return validate_model(model, data, path, tree, problems, environ)
