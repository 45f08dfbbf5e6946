"""One typed, immutable Settings object: flags > JANITOR_* environment > YAML file > defaults.

Everything is validated before anything connects (SPEC.md "Configuration"): a bad value
raises :class:`ConfigurationError` with one line naming the setting, where it came from and
the value, secrets masked.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args
from urllib.parse import urlsplit

import psycopg.conninfo
import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    FilePath,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from janitor import redact
from janitor.errors import ConfigurationError
from janitor.naming import (
    SAMPLE_RELEASE,
    Templates,
    check_template,
    identifier_refusal,
    render,
    repository_refusal,
)
from janitor.sweepers import logs

T = TypeVar("T")
Subsystem = Literal["databases", "registry", "logs", "metrics"]
SUBSYSTEMS: tuple[Subsystem, ...] = ("databases", "registry", "logs", "metrics")
ENV_PREFIX = "JANITOR_"
NO_REGISTRY = "none"


def _whole_number(value: Any) -> Any:
    # pydantic's lax mode would take True as 1 and 15.0 as 15; a window is a whole number.
    if isinstance(value, bool | float):
        raise ValueError("must be a whole number")
    if isinstance(value, str):
        stripped = value.strip()
        if not re.fullmatch(r"[+-]?\d+", stripped):
            raise ValueError("must be a whole number")
        return int(stripped)
    return value


def _comma_list(value: Any) -> Any:
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


def _empty_is_unset(value: Any) -> Any:
    # Helm renders an unset value as "", which must mean "not configured", not "empty URL".
    if isinstance(value, str) and not value.strip():
        return None
    return value


Days = Annotated[int, BeforeValidator(_whole_number), Field(ge=1)]
Count = Annotated[int, BeforeValidator(_whole_number), Field(ge=0)]
Workers = Annotated[int, BeforeValidator(_whole_number), Field(ge=1, le=64)]
Optional = BeforeValidator(_empty_is_unset)
OptStr = Annotated[str | None, Optional]
OptSecret = Annotated[SecretStr | None, Optional]
# A CA bundle must exist before anything connects, whichever remote it is for.
CaBundle = Annotated[FilePath | None, Optional]
Names = Annotated[tuple[str, ...], BeforeValidator(_comma_list)]


def _sweeper_rule(rule: Callable[[T], object], value: T) -> T:
    """Applies a sweeper's own validation at load time, so it fails before anything connects."""
    try:
        rule(value)
    except ConfigurationError as exc:
        # The sweeper names the setting itself; the loader adds name, value and source.
        raise ValueError(str(exc).split(": ", 1)[-1]) from None
    return value


def _template_giving(template: str, refusal: Callable[[str], str | None]) -> str:
    """A template that gives a valid name for an ordinary release name; one that cannot
    is a configuration error, while a release name too odd for a valid template only
    skips that deployment (naming.Templates.refusal)."""
    check_template(template)
    name = render(template, SAMPLE_RELEASE)
    problem = refusal(name)
    if problem is not None:
        raise ValueError(f"gives {name!r} for release {SAMPLE_RELEASE!r}, which {problem}")
    return template


def _check_dsn(value: SecretStr | None) -> SecretStr | None:
    if value is None:
        return None
    conninfo = value.get_secret_value()
    try:
        params = psycopg.conninfo.conninfo_to_dict(conninfo)
    except psycopg.Error as exc:
        # libpq quotes the token it could not read, which may be the password itself.
        problem = redact.quoted_fragments_masked(
            " ".join(str(exc).split()), redact.password_region(conninfo)
        )
        raise ValueError(f"is not a valid PostgreSQL DSN ({problem})") from None
    # libpq splits user info at the first "@", so an unencoded "@" in a password leaves its
    # tail in the host name, where it would be shown as if it were no secret.
    if "@" in str(params.get("host", "")):
        raise ValueError(
            "has an '@' in its host: percent-encode '@' in the password as %40"
        ) from None
    return value


def _check_url(value: str | None, *, allow_none_word: bool = False) -> str | None:
    if value is None or (allow_none_word and value == NO_REGISTRY):
        return value
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host")
    try:
        _ = parts.port
    except ValueError:
        raise ValueError("has an invalid port") from None
    return value.rstrip("/")


class Settings(BaseModel):
    """Everything a run needs to know, validated once and passed down explicitly."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    houston_dsn: OptSecret = None
    airflow_dsn: OptSecret = None
    houston_schema: str = "houston$default"
    houston_table: str = "Deployment"
    houston_id_column: str = "id"
    houston_release_column: str = "releaseName"
    houston_deleted_column: str = "deletedAt"
    retention_days: Days = 15
    database_template: str = "{release_snake}_airflow"
    role_templates: Names = ("{release_snake}_airflow", "{release_snake}_celery")

    registry_url: OptStr = None
    registry_username: OptStr = None
    registry_password: OptSecret = None
    registry_token: OptSecret = None
    registry_ca_bundle: CaBundle = None
    registry_repository_template: str = "{release}/airflow"

    elasticsearch_url: OptStr = None
    elasticsearch_username: OptStr = None
    elasticsearch_password: OptSecret = None
    elasticsearch_api_key: OptSecret = None
    elasticsearch_ca_bundle: CaBundle = None
    log_retention_days: Days = 15
    log_index_patterns: Names = ("fluentd.*", "vector.*")
    log_age_source: Literal["creation_date", "name"] = "creation_date"
    log_timestring: str = "%Y.%m.%d"

    prometheus_url: OptStr = None
    prometheus_username: OptStr = None
    prometheus_password: OptSecret = None
    prometheus_token: OptSecret = None
    prometheus_ca_bundle: CaBundle = None
    prometheus_source: Literal["http", "kubernetes"] = "http"
    prometheus_kind: Literal["prometheus", "statefulset"] = "statefulset"
    prometheus_namespace: OptStr = None
    prometheus_name: str = "astronomer-prometheus"
    metrics_retention_days: Days = 15

    lease_name: str = "astro-janitor"
    lease_namespace: OptStr = None
    lease_duration_seconds: Annotated[int, BeforeValidator(_whole_number), Field(ge=15)] = 60
    pod_name: OptStr = None
    kubernetes_events: bool = False
    cronjob_name: OptStr = None

    dry_run: bool = False
    max_deletions: Count = 0
    concurrency: Workers = 8
    log_format: Annotated[Literal["json", "console"] | None, Optional] = None
    only: Annotated[tuple[Subsystem, ...] | None, BeforeValidator(_comma_list), Optional] = None

    _dsns = field_validator("houston_dsn", "airflow_dsn")(_check_dsn)

    @field_validator("registry_url")
    @classmethod
    def _registry_url(cls, value: str | None) -> str | None:
        return _check_url(value, allow_none_word=True)

    @field_validator("elasticsearch_url", "prometheus_url")
    @classmethod
    def _urls(cls, value: str | None) -> str | None:
        return _check_url(value)

    @field_validator("database_template")
    @classmethod
    def _template(cls, value: str) -> str:
        return _template_giving(value, identifier_refusal)

    @field_validator("role_templates")
    @classmethod
    def _role_templates(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_template_giving(t, identifier_refusal) for t in value)

    @field_validator("registry_repository_template")
    @classmethod
    def _repository_template(cls, value: str) -> str:
        return _template_giving(value, repository_refusal)

    @field_validator("log_index_patterns")
    @classmethod
    def _patterns(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for pattern in value:
            # "*" alone or a leading "." addresses every index or the system ones: not a
            # log retention pattern (hidden/system indices stay out of reach, SPEC.md).
            if pattern.startswith(".") or pattern.strip("*") == "":
                raise ValueError(f"pattern {pattern!r} would address more than log indices")
        return _sweeper_rule(logs.validate_patterns, value)

    @field_validator("log_timestring")
    @classmethod
    def _timestring(cls, value: str) -> str:
        _sweeper_rule(logs.name_date_pattern, value)
        return value

    @model_validator(mode="after")
    def _kubernetes_source_has_a_namespace(self) -> Settings:
        if self.prometheus_source == "kubernetes" and not self.kubernetes_namespace:
            raise ValueError(
                "JANITOR_PROMETHEUS_SOURCE=kubernetes needs JANITOR_PROMETHEUS_NAMESPACE "
                "(or JANITOR_LEASE_NAMESPACE, the pod's namespace)"
            )
        return self

    @property
    def kubernetes_namespace(self) -> str | None:
        """Where the Prometheus resource lives: its own setting, else the pod's namespace."""
        return self.prometheus_namespace or self.lease_namespace

    @model_validator(mode="after")
    def _subsystems_have_endpoints(self) -> Settings:
        if self.only is not None:
            for name in self.only:
                missing = self.missing_endpoint(name)
                if missing:
                    raise ValueError(f"--only {name} needs {missing}")
        return self

    def missing_endpoint(self, subsystem: Subsystem) -> str | None:
        needs: dict[Subsystem, tuple[str, object]] = {
            "databases": ("JANITOR_HOUSTON_DSN", self.houston_dsn),
            "registry": (
                "JANITOR_HOUSTON_DSN and JANITOR_REGISTRY_URL (not 'none')",
                self.houston_dsn and self.registry_url not in (None, NO_REGISTRY),
            ),
            "logs": ("JANITOR_ELASTICSEARCH_URL", self.elasticsearch_url),
            "metrics": (
                "JANITOR_PROMETHEUS_URL (or JANITOR_PROMETHEUS_SOURCE=kubernetes)",
                self.prometheus_url or self.prometheus_source == "kubernetes",
            ),
        }
        name, present = needs[subsystem]
        return None if present else name

    @property
    def subsystems(self) -> tuple[Subsystem, ...]:
        """What this run sweeps: configured endpoints, narrowed by --only."""
        chosen = self.only if self.only is not None else SUBSYSTEMS
        return tuple(s for s in SUBSYSTEMS if s in chosen and self.missing_endpoint(s) is None)

    def unswept_reasons(self) -> tuple[str, ...]:
        """Why no deployment row may be purged in this run: the row is the only record of
        what is left to clean, so both deployment sweepers must run (README step 3). A
        platform that keeps no images says so with JANITOR_REGISTRY_URL=none."""
        reasons = []
        if "databases" not in self.subsystems:
            reasons.append("databases not swept")
        if "registry" not in self.subsystems and self.registry_url != NO_REGISTRY:
            reasons.append("registry not swept")
        return tuple(reasons)

    def templates(self) -> Templates:
        """How release names become resource names; the repository counts only when the
        registry is swept in this run."""
        return Templates(
            database=self.database_template,
            roles=self.role_templates,
            repository=(
                self.registry_repository_template if "registry" in self.subsystems else None
            ),
        )

    def reveal(self, name: str) -> str | None:
        """The plain value of a secret setting, for the client that needs it."""
        value = getattr(self, name)
        return value.get_secret_value() if isinstance(value, SecretStr) else None

    def houston_conninfo(self) -> str | None:
        return self.houston_dsn.get_secret_value() if self.houston_dsn else None

    def airflow_conninfo(self) -> str | None:
        if self.airflow_dsn is not None:
            return self.airflow_dsn.get_secret_value()
        houston = self.houston_conninfo()
        return psycopg.conninfo.make_conninfo(houston, dbname="postgres") if houston else None

    def secrets(self) -> tuple[str, ...]:
        """Every secret value, so the event pipeline can mask it wherever it shows up."""
        found: list[str] = []
        for name in type(self).model_fields:
            value = getattr(self, name)
            if not isinstance(value, SecretStr):
                continue
            secret = value.get_secret_value()
            password = redact.dsn_password(secret) if name.endswith("_dsn") else secret
            if password:
                found.append(password)
        for url in (self.registry_url, self.elasticsearch_url, self.prometheus_url):
            password = redact.url_password(url) if url else None
            if password:
                found.append(password)
        return tuple(found)

    def summary(self) -> dict[str, Any]:
        """The non-secret configuration, for run.started."""
        shown: dict[str, Any] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                if name.endswith("_dsn"):
                    shown[name] = redact.display_dsn(value.get_secret_value())
                else:
                    shown[name] = redact.MASK
            elif isinstance(value, Path):
                shown[name] = str(value)
            elif isinstance(value, str) and name.endswith("_url"):
                shown[name] = redact.display_url(value)
            else:
                shown[name] = list(value) if isinstance(value, tuple) else value
        return shown


SECRET_FIELDS = frozenset(
    name for name, info in Settings.model_fields.items() if SecretStr in get_args(info.annotation)
)


@dataclass(frozen=True)
class Source:
    """Where a value came from, as an operator would name it."""

    key: str
    origin: str


def _env_values(environ: Mapping[str, str]) -> dict[str, tuple[Any, Source]]:
    values: dict[str, tuple[Any, Source]] = {}
    for name in Settings.model_fields:
        key = ENV_PREFIX + name.upper()
        if key in environ:
            values[name] = (environ[key], Source(key, "environment"))
    return values


def _file_values(path: Path) -> dict[str, tuple[Any, Source]]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(
            f"--config {path}: cannot read the file ({exc.strerror})"
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigurationError(f"--config {path}: not valid YAML ({exc})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigurationError(f"--config {path}: must be a mapping of setting: value")
    values: dict[str, tuple[Any, Source]] = {}
    for key, value in data.items():
        name = str(key).lower().removeprefix(ENV_PREFIX.lower())
        if name not in Settings.model_fields:
            raise ConfigurationError(f"--config {path}: unknown setting {key!r}")
        values[name] = (value, Source(str(key), f"config file {path}"))
    return values


def _shown(name: str, value: Any) -> str:
    if name in SECRET_FIELDS:
        return repr(redact.display_dsn(str(value))) if name.endswith("_dsn") else redact.MASK
    return repr(redact.mask_text(value) if isinstance(value, str) else value)


def load_settings(
    flags: Mapping[str, Any], environ: Mapping[str, str], config_file: Path | None = None
) -> Settings:
    """Merge the sources by precedence and validate; raises ConfigurationError."""
    merged: dict[str, tuple[Any, Source]] = {}
    if config_file is not None:
        merged.update(_file_values(config_file))
    merged.update(_env_values(environ))
    for name, value in flags.items():
        if value is not None:
            merged[name] = (value, Source("--" + name.replace("_", "-"), "command line"))
    try:
        return Settings.model_validate({name: value for name, (value, _) in merged.items()})
    except ValidationError as exc:
        raise ConfigurationError(_describe(exc, merged)) from None


def _describe(exc: ValidationError, merged: Mapping[str, tuple[Any, Source]]) -> str:
    error = exc.errors()[0]
    name = str(error["loc"][0]) if error["loc"] else ""
    message = _plain_message(error)
    if name in merged:
        value, source = merged[name]
        return f"{source.key}={_shown(name, value)} ({source.origin}): {message}"
    if name:
        return f"{ENV_PREFIX}{name.upper()}: {message}"
    return message


def _plain_message(error: Any) -> str:
    """pydantic's wording, said the way an operator reads a setting."""
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind == "greater_than_equal":
        return f"must be a whole number >= {ctx['ge']}"
    if kind == "less_than_equal":
        return f"must be at most {ctx['le']}"
    if kind == "literal_error":
        return f"{error['input']!r} is not one of {ctx['expected']}"
    if kind in ("path_not_file", "path_type"):
        return "no such file"
    if kind in ("bool_parsing", "bool_type"):
        return "must be true or false"
    return " ".join(str(error["msg"]).removeprefix("Value error, ").split())
