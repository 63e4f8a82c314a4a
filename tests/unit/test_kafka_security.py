"""Client security settings (snf.kafka.security): parsing, validation, masking, and
what kafka-python and Faust are given. Also the names and files of a `--secure`
cluster. No broker."""

from __future__ import annotations

import os
import ssl
import stat
from pathlib import Path

import faust
import pytest

from snf.cli.main import main
from snf.errors import ConfigError
from snf.kafka import cluster, kraft_config, secure_cluster, security
from snf.kafka.errors import BrokerError
from snf.kafka.security import KafkaSecurity, client_kwargs, load, worker_auth
from snf.runtime.worker.app import broker_credentials

SECRET = "s3cr3t-never-printed"


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A real CA and broker keystore, as `snf kafka up --secure` makes them."""
    return secure_cluster.make_tls(tmp_path_factory.mktemp("tls"))


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_properties_file_with_relative_ca(tmp_path: Path) -> None:
    (tmp_path / "certs").mkdir()
    write(tmp_path / "certs" / "ca.pem", "x")
    cfg = write(
        tmp_path / "client.properties",
        "# comment\n! also a comment\n\nsecurity.protocol = SASL_SSL\n"
        f"sasl.mechanism=SCRAM-SHA-512\nsasl.username: snf\nsasl.password={SECRET}\n"
        "ssl.ca.location=certs/ca.pem\n",
    )
    sec = load(cfg, environ={})
    assert sec is not None and sec.tls and sec.sasl
    assert sec.ssl_ca_location == tmp_path / "certs" / "ca.pem"  # relative to the file
    assert sec.describe() == "SASL_SSL as snf (SCRAM-SHA-512)"


def test_yaml_file(tmp_path: Path) -> None:
    cfg = write(
        tmp_path / "kafka.yaml",
        f"security.protocol: SASL_PLAINTEXT\nsasl.mechanism: PLAIN\nsasl.username: u\n"
        f"sasl.password: {SECRET}\n",
    )
    sec = load(cfg, environ={})
    assert sec is not None and sec.sasl and not sec.tls


def test_secrets_are_masked(tmp_path: Path) -> None:
    cfg = write(
        tmp_path / "c.properties",
        f"security.protocol=SASL_PLAINTEXT\nsasl.mechanism=PLAIN\nsasl.username=u\n"
        f"sasl.password={SECRET}\n",
    )
    sec = load(cfg, environ={})
    assert SECRET not in repr(sec) and SECRET not in str(sec)
    auth = worker_auth(sec)
    assert auth is not None and auth.password == SECRET and SECRET not in repr(auth)


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    cfg = write(
        tmp_path / "c.properties",
        "security.protocol=SASL_PLAINTEXT\nsasl.mechanism=PLAIN\nsasl.username=u\n",
    )
    env = {"SNF_KAFKA_SASL_PASSWORD": SECRET, "SNF_KAFKA_SASL_MECHANISM": "SCRAM-SHA-256"}
    sec = load(cfg, environ=env)
    assert sec is not None and sec.sasl_mechanism == "SCRAM-SHA-256"
    assert sec.sasl_password is not None and sec.sasl_password.get_secret_value() == SECRET
    assert security.env_name("ssl.key.password") == "SNF_KAFKA_SSL_KEY_PASSWORD"
    assert load(None, environ={}) is None  # nothing given: plaintext


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("security.protocol=SASL_SSL\nsasl.pasword=x\n", "sasl.pasword: unknown key (known: "),
        ("security.protocol=TLS\n", "security.protocol: Input should be 'PLAINTEXT'"),
        ("security.protocol=SASL_SSL\nsasl.username=u\nsasl.password=p\n", "sasl.mechanism is"),
        ("security.protocol=SSL\nssl.ca.location=missing.pem\n", "ssl.ca.location: no such file"),
        ("sasl.mechanism=PLAIN\n", "sasl.* settings need a SASL security.protocol"),
        ("security.protocol=SSL\nssl.key.location=c.properties\n", "go together"),
        ("security.protocol SSL\n", "cannot read it: not key=value"),
    ],
)
def test_errors_are_one_line_naming_file_and_key(tmp_path: Path, text: str, expected: str) -> None:
    cfg = write(tmp_path / "c.properties", text + f"# {SECRET}\n")
    with pytest.raises(ConfigError) as err:
        load(cfg, environ={})
    message = str(err.value)
    assert message.startswith(f"kafka config {cfg}: ") and expected in message
    assert "\n" not in message and SECRET not in message


def test_password_is_never_echoed_in_errors(tmp_path: Path) -> None:
    cfg = write(tmp_path / "c.yaml", "security.protocol: SASL_SSL\nsasl.mechanism: PLAIN\n")
    with pytest.raises(ConfigError) as err:
        load(cfg, environ={"SNF_KAFKA_SASL_USERNAME": "", "SNF_KAFKA_SASL_PASSWORD": SECRET})
    assert SECRET not in str(err.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read it: No such file"):
        load(tmp_path / "nope.properties", environ={})


def test_kafka_python_and_faust_get_the_same_settings(tls: tuple[Path, Path]) -> None:
    ca, _ = tls
    sec = KafkaSecurity.model_validate(
        {
            "security.protocol": "SASL_SSL",
            "sasl.mechanism": "SCRAM-SHA-512",
            "sasl.username": "snf",
            "sasl.password": SECRET,
            "ssl.ca.location": ca,
        }
    )
    kw = client_kwargs(sec)
    assert kw["security_protocol"] == "SASL_SSL" and kw["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (kw["sasl_plain_username"], kw["sasl_plain_password"]) == ("snf", SECRET)
    context = kw["ssl_context"]
    assert isinstance(context, ssl.SSLContext) and context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname

    creds = broker_credentials(worker_auth(sec))
    assert isinstance(creds, faust.SASLCredentials)
    assert creds.protocol.value == "SASL_SSL" and creds.mechanism.value == "SCRAM-SHA-512"
    assert (creds.username, creds.password) == ("snf", SECRET)
    assert SECRET not in repr(creds)


def test_tls_only_and_plaintext(tls: tuple[Path, Path]) -> None:
    ca, _ = tls
    sec = KafkaSecurity.model_validate({"security.protocol": "SSL", "ssl.ca.location": ca})
    assert set(client_kwargs(sec)) == {"security_protocol", "ssl_context"}
    assert isinstance(broker_credentials(worker_auth(sec)), faust.SSLCredentials)
    plain = KafkaSecurity()
    assert client_kwargs(plain) == {} and worker_auth(plain) is None
    assert broker_credentials(None) is None
    sasl = KafkaSecurity.model_validate(
        {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "PLAIN"}
        | {"sasl.username": "u", "sasl.password": "p"}
    )
    creds = broker_credentials(worker_auth(sasl))
    assert isinstance(creds, faust.SASLCredentials) and creds.protocol.value == "SASL_PLAINTEXT"


def test_mutual_tls_loads_the_client_certificate(tls: tuple[Path, Path], tmp_path: Path) -> None:
    ca, _ = tls
    tls_dir = ca.parent
    sec = KafkaSecurity.model_validate(
        {
            "security.protocol": "SSL",
            "ssl.ca.location": ca,
            "ssl.certificate.location": tls_dir / "broker.crt",
            "ssl.key.location": tls_dir / "broker.key",
        }
    )
    assert sec.ssl_context() is not None  # raises if key and certificate do not match


def test_cli_exports_the_config_for_child_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(security.CONFIG_ENV, "")  # main() sets it; restored after the test
    bad = write(tmp_path / "bad.properties", "security.protocol=SASL_SSL\n")
    assert main(["--kafka-config", str(bad), "kafka", "status", "--name", "nothing-here"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sasl.mechanism is required" in err
    good = write(tmp_path / "good.properties", "security.protocol=PLAINTEXT\n")
    assert main(["--kafka-config", str(good), "kafka", "status", "--name", "nothing-here"]) == 0
    assert os.environ[security.CONFIG_ENV] == str(good.resolve())


@pytest.mark.parametrize("name", ["../../x", "..", ".", "", "a/b", "/abs", "x y", "n.lock"])
def test_cluster_names_are_never_paths(name: str) -> None:
    with pytest.raises(BrokerError, match="invalid cluster name"):
        cluster.down(name=name)
    with pytest.raises(BrokerError, match="invalid cluster name"):
        cluster.up(name=name)


def test_valid_cluster_names() -> None:
    for name in ("default", "pytest-123", "a.b_c-D9"):
        assert cluster.check_name(name) == name


def test_secure_cluster_files(tmp_path: Path, tls: tuple[Path, Path]) -> None:
    ca, keystore = tls
    assert stat.S_IMODE(keystore.stat().st_mode) == 0o600
    text = keystore.read_text()
    assert text.startswith("-----BEGIN PRIVATE KEY-----") and text.count("CERTIFICATE") == 4
    setup = kraft_config.SecureSetup(ca, keystore, "adminpw", {"snf": SECRET})
    path = secure_cluster.write_client_config(tmp_path / "client.properties", setup, "t")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    sec = load(path, environ={})
    assert sec is not None and sec.sasl_username == "snf" and sec.ssl_ca_location == ca
    args = secure_cluster.scram_args(setup)
    assert args == [
        "--add-scram", "SCRAM-SHA-512=[name=admin,password=adminpw]",
        "--add-scram", f"SCRAM-SHA-512=[name=snf,password={SECRET}]",
    ]  # fmt: skip


def test_every_user_of_a_secure_cluster_has_a_config(
    tmp_path: Path, tls: tuple[Path, Path]
) -> None:
    setup = kraft_config.SecureSetup(*tls, "adminpw", {"snf": SECRET, "capture": "cpw"})
    client = secure_cluster.write_client_configs(tmp_path, setup, "t")
    info = kraft_config.plan("t", 1, tmp_path, [9001, 9002])
    info.client_config = str(client)
    for user, password in (("snf", SECRET), ("capture", "cpw"), ("admin", "adminpw")):
        path = secure_cluster.user_config(info, user)
        assert path.parent == tmp_path and stat.S_IMODE(path.stat().st_mode) == 0o600
        sec = load(path, environ={})
        assert sec is not None and sec.sasl_username == user and sec.sasl_password is not None
        assert sec.sasl_password.get_secret_value() == password
    assert secure_cluster.user_config(info, "snf") == client
    with pytest.raises(BrokerError, match="not secure"):
        secure_cluster.user_config(kraft_config.plan("p", 1, tmp_path, [1, 2]), "snf")


def test_secure_node_properties(tmp_path: Path, tls: tuple[Path, Path]) -> None:
    ca, keystore = tls
    info = kraft_config.plan("t", 1, tmp_path / "t", [9001, 9002])
    specs = kraft_config.specs_of(info)
    setup = kraft_config.SecureSetup(ca, keystore, "adminpw")
    props = kraft_config.node_properties(specs[0], specs, setup)
    assert props["listeners"] == "SASL_SSL://127.0.0.1:9001,CONTROLLER://127.0.0.1:9002"
    assert props["listener.security.protocol.map"] == "SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT"
    assert props["inter.broker.listener.name"] == "SASL_SSL"
    assert props["ssl.keystore.type"] == "PEM" and props["ssl.keystore.location"] == str(keystore)
    assert 'password="adminpw"' in props["listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config"]
    plain = kraft_config.node_properties(specs[0], specs)
    assert plain["listeners"].startswith("PLAINTEXT://") and "sasl.enabled.mechanisms" not in plain


def test_a_secure_default_cluster_brings_its_client_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SNF_HOME", str(tmp_path))
    monkeypatch.delenv("SNF_BROKERS", raising=False)
    monkeypatch.setenv(security.CONFIG_ENV, "")  # resolve_brokers sets it; restored after
    info = kraft_config.plan("default", 1, tmp_path / "clusters" / "default", [9001, 9002])
    info.client_config = str(tmp_path / "client.properties")
    info.data_dir.mkdir(parents=True)
    info.save()
    monkeypatch.setattr(cluster, "_alive", lambda node: True)
    assert cluster.resolve_brokers() == "127.0.0.1:9001"
    assert os.environ[security.CONFIG_ENV] == info.client_config
    monkeypatch.setenv(security.CONFIG_ENV, "/elsewhere.properties")
    assert cluster.resolve_brokers() == "127.0.0.1:9001"
    assert os.environ[security.CONFIG_ENV] == "/elsewhere.properties"  # a set one wins
