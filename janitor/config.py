"""One typed, immutable Settings object: flags > JANITOR_* environment > YAML file > defaults.

Everything is validated before anything connects (README "Configuration"): a bad value
raises :class:`ConfigurationError` with one line naming the setting, where it came from and
the value, secrets masked.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args, get_origin
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    FilePath,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from janitor import redact
from janitor.clients.backupstore import location
from janitor.errors import ConfigurationError
from janitor.naming import (
    SAMPLE_RELEASE,
    Templates,
    check_template,
    identifier_refusal,
    index_pattern_refusal,
    name_date_pattern,
    render,
    repository_refusal,
)
from janitor.sharding import JOB_COMPLETION_INDEX, MAX_SHARDS, WHOLE_FLEET, Shard, parse_shard

T = TypeVar("T")
Subsystem = Literal["databases", "registry", "logs", "metrics"]
SUBSYSTEMS: tuple[Subsystem, ...] = ("databases", "registry", "logs", "metrics")
# What is swept deployment by deployment, and so split between shards (README "Sharding").
DEPLOYMENT_SUBSYSTEMS: tuple[Subsystem, ...] = ("databases", "registry")
ENV_PREFIX = "JANITOR_"
NO_REGISTRY = "none"


def _whole_number(value: Any) -> Any:
    # pydantic's lax mode would take True as 1 and 15.0 as 15; a window is a whole number.
    if isinstance(value, bool | float):
        raise ValueError("must be a whole number")
    if isinstance(value, str):
        stripped = value.strip()
        if not re.fullmatch(r"[+-]?[0-9]+", stripped):
            raise ValueError("must be a whole number")
        # pydantic reads the digits itself: Python's int() raises on more than 4300 of them.
        return stripped
    return value


def _comma_list(value: Any) -> Any:
    """A list setting's items, blank ones dropped, from "a,b" or a YAML list."""
    if isinstance(value, str):
        value = value.split(",")
    if isinstance(value, list | tuple):
        items = (item.strip() if isinstance(item, str) else item for item in value)
        return tuple(item for item in items if item != "")
    return value


# N days before the run's now must stay a valid datetime and PostgreSQL timestamp (issue 17:
# 800000 overflowed mid-run); a century is beyond any retention anyone means.
MAX_DAYS = 36500
# Beyond any real plan (0 means no limit), and far inside what a 64-bit counter holds.
MAX_DELETIONS = 1_000_000_000
# PostgreSQL cuts a longer name to its first 63 bytes (NAMEDATALEN - 1), which may name
# another table or column.
PG_NAME_BYTES = 63
_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"


def _shard(value: Any) -> Shard:
    if isinstance(value, Shard):
        return value
    return parse_shard(value if isinstance(value, str) else "")


def _postgres_name(value: str) -> str:
    if len(value.encode()) > PG_NAME_BYTES:
        raise ValueError(f"is longer than {PG_NAME_BYTES} bytes, PostgreSQL's limit for a name")
    return value


def _kubernetes_name(value: str | None) -> str | None:
    # The API server refuses any other name (422), but only once the run is under way.
    if value is not None and (
        len(value) > 253 or not re.fullmatch(rf"{_DNS_LABEL}(\.{_DNS_LABEL})*", value)
    ):
        raise ValueError(
            "is not a Kubernetes object name (at most 253 lowercase letters, digits, '-', '.')"
        )
    return value


def _kubernetes_namespace(value: str | None) -> str | None:
    if value is not None and (len(value) > 63 or not re.fullmatch(_DNS_LABEL, value)):
        raise ValueError(
            "is not a Kubernetes namespace (at most 63 lowercase letters, digits, '-')"
        )
    return value


Days = Annotated[int, BeforeValidator(_whole_number), Field(ge=1, le=MAX_DAYS)]
Count = Annotated[int, BeforeValidator(_whole_number), Field(ge=0, le=MAX_DELETIONS)]
Workers = Annotated[int, BeforeValidator(_whole_number), Field(ge=1, le=64)]
# The chart's bound: a lease outliving a crashed run by more than an hour would block the next.
LeaseSeconds = Annotated[int, BeforeValidator(_whole_number), Field(ge=15, le=3600)]
# A lock wait longer than an hour is a hang by another name (README "Time limits").
LockSeconds = Annotated[int, BeforeValidator(_whole_number), Field(ge=1, le=3600)]
# 0 is no deadline; a week bounds it where a Job's activeDeadlineSeconds would anyway.
DeadlineSeconds = Annotated[int, BeforeValidator(_whole_number), Field(ge=0, le=7 * 86400)]
# A push is the run's last act before run.finished: a minute already delays that line a lot.
PushSeconds = Annotated[int, BeforeValidator(_whole_number), Field(ge=1, le=60)]
# A CA bundle must exist before anything connects, whichever remote it is for.
CaBundle = FilePath | None
Names = Annotated[tuple[str, ...], BeforeValidator(_comma_list)]
ShardCount = Annotated[int, BeforeValidator(_whole_number), Field(ge=1, le=MAX_SHARDS)]


def _credential_problem(
    prefix: str,
    url: str | None,
    *,
    username: str | None,
    password: SecretStr | None,
    token: SecretStr | None,
) -> str | None:
    """Why a remote's credentials cannot work together (basic auth, a bearer token, or user
    info in the URL: one of them), or None."""
    in_url = url is not None and urlsplit(url).username is not None
    if token is not None and username is not None:
        return f"{prefix}_TOKEN and {prefix}_USERNAME/_PASSWORD are exclusive: choose one"
    if username is not None and password is None:
        return f"{prefix}_USERNAME and {prefix}_PASSWORD go together: {prefix}_PASSWORD is unset"
    if password is not None and username is None:
        return f"{prefix}_PASSWORD is set without {prefix}_USERNAME"
    if in_url and (username is not None or token is not None):
        return (
            f"{prefix}_URL carries credentials and {prefix}_USERNAME or _TOKEN is set too: "
            "configure them once"
        )
    return None


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
    import psycopg.conninfo  # noqa: PLC0415 - a logs- or metrics-only run never loads libpq

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
    refused = _dsn_option_problem(params)
    if refused is not None:
        raise ValueError(f"is not a valid PostgreSQL DSN ({refused})")
    return value


# libpq parses these only when it connects, so a bad value would fail the run mid-way
# (exit 1) instead of at load (README "Configuration": a malformed DSN is exit 2).
# Values from the libpq docs, "Parameter Key Words".
_DSN_INTEGERS = (
    "connect_timeout",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "tcp_user_timeout",
)
_DSN_CHOICES = {
    "sslmode": ("disable", "allow", "prefer", "require", "verify-ca", "verify-full"),
    "gssencmode": ("disable", "prefer", "require"),
    "channel_binding": ("disable", "prefer", "require"),
    "target_session_attrs": (
        "any",
        "read-write",
        "read-only",
        "primary",
        "standby",
        "prefer-standby",
    ),
    "load_balance_hosts": ("disable", "random"),
}


def _dsn_option_problem(params: Mapping[str, Any]) -> str | None:
    """What libpq would refuse on connecting, named without the value of any other option."""
    for port in str(params.get("port") or "").split(","):
        if port and not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
            return f"port {port[:20]!r} is not a port number (1-65535)"
    for name in _DSN_INTEGERS:
        value = str(params.get(name) or "")
        if value and re.fullmatch(r"-?[0-9]{1,9}", value.strip()) is None:
            return f"{name} {value[:20]!r} is not a whole number"
    for name, choices in _DSN_CHOICES.items():
        value = str(params.get(name) or "")
        if value and value not in choices:
            return f"{name} {value[:20]!r} is not one of {', '.join(choices)}"
    return None


def _check_url(value: str | None, *, allow_none_word: bool = False) -> str | None:
    if value is None or (allow_none_word and value == NO_REGISTRY):
        return value
    # urlsplit quietly drops tabs and newlines that the HTTP client would then refuse.
    if re.search(r"[\x00-\x20\x7f]", value):
        raise ValueError("must not contain spaces or control characters")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host")
    try:
        _ = parts.port
    except ValueError:
        raise ValueError("has an invalid port") from None
    if parts.query or parts.fragment or value.endswith(("?", "#")):
        # The janitor appends API paths (/v2/..., /api/v1/...): after a "?" or "#" they
        # would become a query or a fragment and every request would go to the same URL.
        raise ValueError("must not have a query or fragment ('?' or '#')")
    return value.rstrip("/")


class Settings(BaseModel):
    """Everything a run needs to know, validated once and passed down explicitly."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    houston_dsn: SecretStr | None = None
    airflow_dsn: SecretStr | None = None
    houston_schema: str = "houston$default"
    houston_table: str = "Deployment"
    houston_id_column: str = "id"
    houston_release_column: str = "releaseName"
    houston_deleted_column: str = "deletedAt"
    retention_days: Days = 15
    database_template: str = "{release_snake}_airflow"
    role_templates: Names = ("{release_snake}_airflow", "{release_snake}_celery")

    registry_url: str | None = None
    registry_username: str | None = None
    registry_password: SecretStr | None = None
    registry_token: SecretStr | None = None
    registry_ca_bundle: CaBundle = None
    registry_repository_template: str = "{release}/airflow"

    elasticsearch_url: str | None = None
    log_retention_days: Days = 15
    log_index_patterns: Names = ("fluentd.*", "vector.*")
    log_age_source: Literal["creation_date", "name"] = "creation_date"
    log_timestring: str = "%Y.%m.%d"
    elasticsearch_username: str | None = None
    elasticsearch_password: SecretStr | None = None
    elasticsearch_api_key: SecretStr | None = None
    elasticsearch_ca_bundle: CaBundle = None

    prometheus_url: str | None = None
    prometheus_username: str | None = None
    prometheus_password: SecretStr | None = None
    prometheus_token: SecretStr | None = None
    prometheus_ca_bundle: CaBundle = None
    prometheus_source: Literal["http", "kubernetes"] = "http"
    prometheus_kind: Literal["prometheus", "statefulset"] = "statefulset"
    prometheus_namespace: str | None = None
    prometheus_name: str = "astronomer-prometheus"
    metrics_retention_days: Days = 15

    pushgateway_url: str | None = None
    pushgateway_timeout_seconds: PushSeconds = 10

    lease_name: str = "astro-janitor"
    lease_namespace: str | None = None
    lease_duration_seconds: LeaseSeconds = 60
    pod_name: str | None = None
    kubernetes_events: bool = False
    cronjob_name: str | None = None

    dry_run: bool = False
    max_deletions: Count = 0
    concurrency: Workers = 8
    lock_timeout_seconds: LockSeconds = 30
    deadline_seconds: DeadlineSeconds = 0
    log_format: Literal["json", "console"] | None = None
    only: Annotated[tuple[Subsystem, ...] | None, BeforeValidator(_comma_list)] = None
    adopt_orphans: bool = False
    orphan_grace_days: Days = 7
    # Before shard: a bad count is named as such, not as the shard made from it.
    shards: ShardCount = 1
    shard: Annotated[Shard, BeforeValidator(_shard)] = WHOLE_FLEET

    backup_url: str | None = None
    backup_retention_days: Days = 30
    backup_s3_endpoint_url: str | None = None

    _dsns = field_validator("houston_dsn", "airflow_dsn")(_check_dsn)
    _postgres_names = field_validator(
        "houston_schema",
        "houston_table",
        "houston_id_column",
        "houston_release_column",
        "houston_deleted_column",
    )(_postgres_name)
    _kubernetes_names = field_validator("lease_name", "prometheus_name", "cronjob_name")(
        _kubernetes_name
    )
    _namespaces = field_validator("lease_namespace", "prometheus_namespace")(_kubernetes_namespace)

    @field_validator("registry_url")
    @classmethod
    def _registry_url(cls, value: str | None) -> str | None:
        return _check_url(value, allow_none_word=True)

    @field_validator("elasticsearch_url", "prometheus_url", "pushgateway_url")
    @classmethod
    def _urls(cls, value: str | None) -> str | None:
        return _check_url(value)

    @field_validator("backup_url")
    @classmethod
    def _backup_url(cls, value: str | None) -> str | None:
        # README "Final backups and restore": a file:// directory or an s3:// bucket/prefix,
        # kept in one canonical form (every backup URI starts with it).
        return None if value is None else location(value).url

    @field_validator("backup_s3_endpoint_url")
    @classmethod
    def _s3_endpoint(cls, value: str | None) -> str | None:
        checked = _check_url(value)
        if checked is not None and urlsplit(checked).username is not None:
            # boto3 would not use them: it reads credentials as README "Final backups" says.
            raise ValueError("must not carry credentials (use AWS_ACCESS_KEY_ID and friends)")
        return checked

    @model_validator(mode="after")
    def _s3_endpoint_goes_with_s3(self) -> Settings:
        if self.backup_s3_endpoint_url is not None and not (self.backup_url or "").startswith(
            "s3://"
        ):
            raise ValueError("JANITOR_BACKUP_S3_ENDPOINT_URL needs an s3:// JANITOR_BACKUP_URL")
        return self

    @field_validator("database_template", "role_templates", "registry_repository_template")
    @classmethod
    def _templates(cls, value: str | tuple[str, ...], info: ValidationInfo) -> object:
        # Each template must give a name its store accepts (README "Configuration").
        registry = info.field_name == "registry_repository_template"
        rule = repository_refusal if registry else identifier_refusal
        if isinstance(value, tuple):
            return tuple(_template_giving(t, rule) for t in value)
        return _template_giving(value, rule)

    @field_validator("log_index_patterns")
    @classmethod
    def _patterns(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for pattern in value:
            problem = index_pattern_refusal(pattern)
            if problem is not None:
                raise ValueError(f"pattern {pattern!r} {problem}")
        return value

    @field_validator("log_timestring")
    @classmethod
    def _timestring(cls, value: str) -> str:
        name_date_pattern(value)
        return value

    @model_validator(mode="after")
    def _credentials_are_consistent(self) -> Settings:
        """Every rule about how credentials combine, checked before anything connects."""
        problem = _credential_problem(
            "JANITOR_REGISTRY",
            self.registry_url,
            username=self.registry_username,
            password=self.registry_password,
            token=self.registry_token,
        ) or _credential_problem(
            "JANITOR_PROMETHEUS",
            self.prometheus_url,
            username=self.prometheus_username,
            password=self.prometheus_password,
            token=self.prometheus_token,
        )
        if problem is not None:
            raise ValueError(problem)
        es_url = self.elasticsearch_url or ""
        if self.elasticsearch_ca_bundle is not None and not es_url.startswith("https://"):
            raise ValueError(
                "JANITOR_ELASTICSEARCH_CA_BUNDLE needs an https:// JANITOR_ELASTICSEARCH_URL"
            )
        if self.elasticsearch_api_key is not None and (
            self.elasticsearch_username or urlsplit(es_url).username
        ):
            raise ValueError(
                "JANITOR_ELASTICSEARCH_API_KEY and a username (JANITOR_ELASTICSEARCH_USERNAME "
                "or one in the URL) are exclusive: choose one"
            )
        return self

    @model_validator(mode="after")
    def _kubernetes_source_has_a_namespace(self) -> Settings:
        if self.prometheus_source == "kubernetes" and not self.kubernetes_namespace:
            raise ValueError(
                "JANITOR_PROMETHEUS_SOURCE=kubernetes needs JANITOR_PROMETHEUS_NAMESPACE "
                "(or JANITOR_LEASE_NAMESPACE, the pod's namespace)"
            )
        return self

    @model_validator(mode="after")
    def _adoption_has_a_houston(self) -> Settings:
        # Orphans are what no row accounts for: without the deployments table there are none.
        if self.adopt_orphans and self.houston_dsn is None:
            raise ValueError("JANITOR_ADOPT_ORPHANS (--adopt-orphans) needs JANITOR_HOUSTON_DSN")
        return self

    @model_validator(mode="after")
    def _shards_have_an_index(self) -> Settings:
        if self.shards > 1 and "shard" not in self.model_fields_set:
            raise ValueError(
                f"JANITOR_SHARDS={self.shards} needs the shard's index: run it in an Indexed "
                f"Job (Kubernetes sets {JOB_COMPLETION_INDEX}) or pass --shard "
                f"INDEX/{self.shards}"
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
    def configured(self) -> tuple[Subsystem, ...]:
        """What has its endpoint configured, narrowed by --only, on any shard."""
        chosen = self.only if self.only is not None else SUBSYSTEMS
        return tuple(s for s in SUBSYSTEMS if s in chosen and self.missing_endpoint(s) is None)

    @property
    def subsystems(self) -> tuple[Subsystem, ...]:
        """What this run sweeps: the configured subsystems; on a shard other than 0 only
        the deployments' (README "Sharding": logs and metrics are fleet-wide work)."""
        return tuple(s for s in self.configured if self.shard.first or s in DEPLOYMENT_SUBSYSTEMS)

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
        if houston is None:
            return None
        import psycopg.conninfo  # noqa: PLC0415 - as in _check_dsn

        return psycopg.conninfo.make_conninfo(houston, dbname="postgres")

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
        urls = (
            self.registry_url,
            self.elasticsearch_url,
            self.prometheus_url,
            self.pushgateway_url,
        )
        for url in urls:
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
            elif isinstance(value, Path | Shard):
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


Values = dict[str, tuple[Any, Source]]
ENV_KEYS = {ENV_PREFIX + name.upper(): name for name in Settings.model_fields}
# The test suite's own variables (tests/conftest.py, tests/es_standin.py), not settings.
TEST_ENV_PREFIX = "JANITOR_TEST_"
LIST_FIELDS = frozenset(
    name
    for name, info in Settings.model_fields.items()
    if any(get_origin(t) is tuple for t in (info.annotation, *get_args(info.annotation)))
)


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """A warning for each JANITOR_* variable that names no setting: a typo would otherwise
    be ignored without a word (the same typo in the YAML file is an error)."""
    return [
        f"{key} is not a setting and is ignored{_did_you_mean(key, variable=True)}"
        for key in sorted(environ)
        if key.startswith(ENV_PREFIX)
        and key not in ENV_KEYS
        and not key.startswith(TEST_ENV_PREFIX)
    ]


def _did_you_mean(key: str, *, variable: bool) -> str:
    """The setting a variable or file key was probably meant to name, as that kind spells it."""
    name = key.lower().removeprefix(ENV_PREFIX.lower())
    close = difflib.get_close_matches(name, Settings.model_fields, n=1)
    if not close:
        return ""
    return f" (did you mean {ENV_PREFIX + close[0].upper() if variable else close[0]}?)"


def _env_values(environ: Mapping[str, str]) -> Values:
    return {
        name: (environ[key], Source(key, "environment"))
        for key, name in ENV_KEYS.items()
        if key in environ
    }


def _file_values(path: Path) -> Values:
    from janitor.config_file import read_yaml  # noqa: PLC0415 - PyYAML only with --config

    data = read_yaml(path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigurationError(f"--config {path}: must be a mapping of setting: value")
    values: Values = {}
    for key, value in data.items():
        name = str(key).lower().removeprefix(ENV_PREFIX.lower())
        if name not in Settings.model_fields:
            hint = _did_you_mean(name, variable=False)
            raise ConfigurationError(f"--config {path}: unknown setting {key!r}{hint}")
        if name in values:
            raise ConfigurationError(
                f"--config {path}: {values[name][1].key!r} and {key!r} are the same setting"
            )
        values[name] = (value, Source(str(key), f"config file {path}"))
    return values


def _given(name: str, value: Any) -> bool:
    """False for a value that counts as not set (README "Configuration"): null, blank, or a
    list with no item. Helm renders an empty or null value as ""."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return False
    return not (name in LIST_FIELDS and _comma_list(value) == ())


def _check_text(values: Values) -> None:
    """No setting holds a NUL byte or bytes that are not UTF-8 (the environment passes them
    on as surrogates): PostgreSQL, HTTP and Kubernetes would each refuse them mid-run."""
    for name, (value, source) in values.items():
        for text in value if isinstance(value, list) else [value]:
            problem = _unreadable(text) if isinstance(text, str) else None
            if problem:
                shown = _shown(name, value)
                raise ConfigurationError(f"{source.key}={shown} ({source.origin}): {problem}")


def _unreadable(text: str) -> str | None:
    if "\x00" in text:
        return "contains a NUL byte"
    try:
        text.encode()
    except UnicodeEncodeError:
        return "is not UTF-8 text"
    return None


def _shown(name: str, value: Any) -> str:
    if name in SECRET_FIELDS:
        return repr(redact.display_dsn(str(value))) if name.endswith("_dsn") else redact.MASK
    if not isinstance(value, str):
        return repr(value)
    text = redact.mask_text(value)
    # One line an operator can read, also for a value of thousands of characters.
    return repr(text) if len(text) <= 80 else f"{text[:60]!r}... ({len(text)} characters)"


def load_settings(
    flags: Mapping[str, Any], environ: Mapping[str, str], config_file: Path | None = None
) -> Settings:
    """Merge the sources by precedence and validate; raises ConfigurationError."""
    sources = [
        _file_values(config_file) if config_file is not None else {},
        _env_values(environ),
        {
            name: (value, Source("--" + name.replace("_", "-"), "command line"))
            for name, value in flags.items()
        },
    ]
    merged: Values = {}
    for values in sources:
        # An empty value is not set: the source below it, else the default, applies.
        merged.update({name: entry for name, entry in values.items() if _given(name, entry[0])})
    _shard_from_job(merged, environ)
    _check_text(merged)
    try:
        return Settings.model_validate({name: value for name, (value, _) in merged.items()})
    except ValidationError as exc:
        raise ConfigurationError(_describe(exc, merged)) from None


def _shard_from_job(merged: Values, environ: Mapping[str, str]) -> None:
    """README "Sharding": with a shard count and no shard given, the shard's index is the
    pod's index in its Indexed Job, which Kubernetes sets in JOB_COMPLETION_INDEX."""
    index = environ.get(JOB_COMPLETION_INDEX)
    if index is None or "shard" in merged or "shards" not in merged:
        return
    count, source = merged["shards"]
    origin = "environment" if source.origin == "environment" else f"environment, {source.origin}"
    key = f"{JOB_COMPLETION_INDEX}/{source.key}"
    merged["shard"] = (f"{index}/{count}", Source(key, origin))


def _describe(exc: ValidationError, merged: Values) -> str:
    error = exc.errors()[0]
    name = str(error["loc"][0]) if error["loc"] else ""
    message = _plain_message(error)
    if name in merged:
        value, source = merged[name]
        return f"{source.key}={_shown(name, value)} ({source.origin}): {message}"
    if name:
        return f"{ENV_PREFIX}{name.upper()}: {message}"
    return message


_PLAIN = {
    "int_parsing_size": "is out of range",
    "path_not_file": "no such file",
    "path_type": "no such file",
    "bool_parsing": "must be true or false",
    "bool_type": "must be true or false",
}


def _plain_message(error: Any) -> str:
    """pydantic's wording, said the way an operator reads a setting."""
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind in _PLAIN:
        return _PLAIN[kind]
    if kind == "greater_than_equal":
        return f"must be a whole number >= {ctx['ge']}"
    if kind == "less_than_equal":
        return f"must be at most {ctx['le']}"
    if kind == "literal_error":
        return f"{error['input']!r} is not one of {ctx['expected']}"
    return " ".join(str(error["msg"]).removeprefix("Value error, ").split())
