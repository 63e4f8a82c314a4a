"""How snf's Kafka clients authenticate: TLS and SASL settings under Kafka's own names.

One set of settings for every client of a process (kafka-python's producers,
consumers and admin clients here, Faust/aiokafka in snf.runtime.worker):

    security.protocol           PLAINTEXT | SSL | SASL_PLAINTEXT | SASL_SSL
    sasl.mechanism              PLAIN | SCRAM-SHA-256 | SCRAM-SHA-512
    sasl.username, sasl.password
    ssl.ca.location             CA file (PEM) that signed the brokers' certificates
    ssl.certificate.location    client certificate (PEM), for mutual TLS ...
    ssl.key.location            ... and its private key (PEM)
    ssl.key.password            that key's password, if it is encrypted

They come from a file (Java properties, or YAML when it ends in .yaml/.yml)
named by `snf --kafka-config FILE` or $SNF_KAFKA_CONFIG; relative paths are
relative to that file. Every key can be overridden by an environment variable
named after it, SNF_KAFKA_ + the key in capitals with `_` for `.` (say
SNF_KAFKA_SASL_PASSWORD), so a secret need not sit in a file or on a command
line. The CLI exports SNF_KAFKA_CONFIG, so the workers and supervisors it
starts use the same settings. Secrets never appear in a repr or an error.
"""

from __future__ import annotations

import functools
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    FilePath,
    SecretStr,
    ValidationError,
    model_validator,
)

from snf.errors import ConfigError

__all__ = [
    "CONFIG_ENV",
    "KafkaSecurity",
    "WorkerAuth",
    "client_kwargs",
    "current",
    "env_name",
    "load",
    "parse_properties",
    "use_config",
    "worker_auth",
]

CONFIG_ENV = "SNF_KAFKA_CONFIG"
Protocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
Mechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


class KafkaSecurity(BaseModel):
    """The validated settings; fields carry Kafka's dotted names as aliases."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    security_protocol: Protocol = Field(default="PLAINTEXT", alias="security.protocol")
    sasl_mechanism: Mechanism | None = Field(default=None, alias="sasl.mechanism")
    sasl_username: str | None = Field(default=None, alias="sasl.username", min_length=1)
    sasl_password: SecretStr | None = Field(default=None, alias="sasl.password")
    ssl_ca_location: FilePath | None = Field(default=None, alias="ssl.ca.location")
    ssl_certificate_location: FilePath | None = Field(
        default=None, alias="ssl.certificate.location"
    )
    ssl_key_location: FilePath | None = Field(default=None, alias="ssl.key.location")
    ssl_key_password: SecretStr | None = Field(default=None, alias="ssl.key.password")

    @model_validator(mode="after")
    def _consistent(self) -> KafkaSecurity:
        if self.sasl:
            for key, value in (
                ("sasl.mechanism", self.sasl_mechanism),
                ("sasl.username", self.sasl_username),
                ("sasl.password", self.sasl_password),
            ):
                if value is None:
                    raise ValueError(f"{key} is required with {self.security_protocol}")
        elif self.sasl_mechanism or self.sasl_username or self.sasl_password:
            raise ValueError(f"sasl.* settings need a SASL security.protocol, not {self.protocol}")
        ssl_given = self.ssl_ca_location or self.ssl_certificate_location or self.ssl_key_location
        if ssl_given and not self.tls:
            raise ValueError(
                f"ssl.* settings need security.protocol SSL or SASL_SSL, not {self.protocol}"
            )
        if (self.ssl_certificate_location is None) != (self.ssl_key_location is None):
            raise ValueError("ssl.certificate.location and ssl.key.location go together")
        if self.ssl_key_password is not None and self.ssl_key_location is None:
            raise ValueError("ssl.key.password without ssl.key.location")
        return self

    @property
    def protocol(self) -> str:
        return self.security_protocol

    @property
    def tls(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")

    @property
    def sasl(self) -> bool:
        return self.security_protocol in ("SASL_PLAINTEXT", "SASL_SSL")

    def ssl_context(self) -> ssl.SSLContext | None:
        """A client context verifying the brokers (and presenting ours, for mTLS)."""
        if not self.tls:
            return None
        ca = self.ssl_ca_location
        context = ssl.create_default_context(cafile=str(ca) if ca else None)
        if self.ssl_certificate_location and self.ssl_key_location:
            password = self.ssl_key_password.get_secret_value() if self.ssl_key_password else None
            context.load_cert_chain(
                str(self.ssl_certificate_location), str(self.ssl_key_location), password
            )
        return context

    def describe(self) -> str:
        """One line for logs and errors, without secrets."""
        who = f" as {self.sasl_username} ({self.sasl_mechanism})" if self.sasl else ""
        return f"{self.security_protocol}{who}"


def env_name(key: str) -> str:
    """The variable that overrides `key`: sasl.password -> SNF_KAFKA_SASL_PASSWORD."""
    return "SNF_KAFKA_" + key.upper().replace(".", "_")


_KEYS = [f.alias for f in KafkaSecurity.model_fields.values() if f.alias]
_PATHS = ("ssl.ca.location", "ssl.certificate.location", "ssl.key.location")


def parse_properties(text: str) -> dict[str, str]:
    """Java properties as Kafka's client configs use them: key=value (or key: value),
    # and ! comments, surrounding blanks stripped. No line continuations or escapes."""
    out: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#!":
            continue
        cut = min((i for i in (line.find("="), line.find(":")) if i >= 0), default=-1)
        if cut < 0:
            raise ValueError(f"not key=value: {line[:40]!r}")
        out[line[:cut].strip()] = line[cut + 1 :].strip()
    return out


def _read(path: Path) -> dict[str, Any]:
    text = path.read_text(encoding="utf-8")
    if path.suffix in (".yaml", ".yml"):
        data = yaml.safe_load(text) or {}
        if not isinstance(data, dict):
            raise ValueError("expected a mapping of Kafka settings")
        return {str(k): v for k, v in data.items()}
    return dict(parse_properties(text))


def load(path: Path | None, environ: Mapping[str, str] | None = None) -> KafkaSecurity | None:
    """The settings of file `path` (if any) with the environment's overrides; None
    when neither gives any. ConfigError, in one line naming file and key, if invalid."""
    environ = os.environ if environ is None else environ
    where = str(path) if path is not None else "environment"
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = _read(path)
        except (OSError, ValueError, yaml.YAMLError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else str(exc).splitlines()[0]
            raise ConfigError(f"kafka config {where}: cannot read it: {reason}") from None
    raw.update({key: environ[env_name(key)] for key in _KEYS if environ.get(env_name(key))})
    if path is None and not raw:
        return None
    base = path.resolve().parent if path is not None else Path.cwd()
    for key in _PATHS:
        if isinstance(raw.get(key), str):
            raw[key] = base / Path(raw[key]).expanduser()
    try:
        return KafkaSecurity.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"kafka config {where}: {_first_error(exc)}") from None


def _first_error(exc: ValidationError) -> str:
    """Pydantic's first error as `key: message`, never echoing a value (it may be a secret)."""
    err = exc.errors(include_input=False, include_url=False)[0]
    loc = ".".join(str(p) for p in err["loc"])
    message = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        return f"{loc}: unknown key (known: {', '.join(_KEYS)})"
    if err["type"] == "path_not_file":
        return f"{loc}: no such file"
    return f"{loc}: {message}" if loc else message


def use_config(path: Path | None) -> KafkaSecurity | None:
    """Validate `path` (else $SNF_KAFKA_CONFIG) now, and make it this process's and its
    children's: the path goes into the environment, absolute, the secrets stay where they are."""
    if path is not None:
        os.environ[CONFIG_ENV] = str(path.resolve())
    return current()


def current() -> KafkaSecurity | None:
    """The process-wide settings ($SNF_KAFKA_CONFIG and SNF_KAFKA_* overrides), cached
    until those variables change."""
    overrides = tuple((k, os.environ.get(env_name(k), "")) for k in _KEYS)
    return _load_cached(os.environ.get(CONFIG_ENV, ""), overrides)


@functools.lru_cache(maxsize=4)
def _load_cached(path: str, overrides: tuple[tuple[str, str], ...]) -> KafkaSecurity | None:
    environ = {env_name(k): v for k, v in overrides if v}
    return load(Path(path) if path else None, environ)


def client_kwargs(security: KafkaSecurity | None = None) -> dict[str, Any]:
    """kafka-python's keyword arguments for `security` (default: the process's)."""
    security = security if security is not None else current()
    if security is None or security.security_protocol == "PLAINTEXT":
        return {}
    out: dict[str, Any] = {"security_protocol": security.security_protocol}
    if security.tls:
        out["ssl_context"] = security.ssl_context()
    if security.sasl:
        assert security.sasl_password is not None  # checked by the model
        out["sasl_mechanism"] = security.sasl_mechanism
        out["sasl_plain_username"] = security.sasl_username
        out["sasl_plain_password"] = security.sasl_password.get_secret_value()
    return out


@dataclass(frozen=True)
class WorkerAuth:
    """Plain data for the worker's Faust credentials (snf.runtime.worker.app)."""

    protocol: str
    ssl_context: ssl.SSLContext | None
    mechanism: str | None
    username: str | None
    password: str | None

    def __repr__(self) -> str:
        return f"WorkerAuth({self.protocol}, mechanism={self.mechanism}, user={self.username})"


def worker_auth(security: KafkaSecurity | None = None) -> WorkerAuth | None:
    """What Faust needs to authenticate, or None for PLAINTEXT (default: the process's)."""
    security = security if security is not None else current()
    if security is None or security.security_protocol == "PLAINTEXT":
        return None
    password = security.sasl_password.get_secret_value() if security.sasl_password else None
    return WorkerAuth(
        security.security_protocol,
        security.ssl_context(),
        security.sasl_mechanism,
        security.sasl_username,
        password,
    )
