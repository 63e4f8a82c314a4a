"""The secrets of a `snf kafka up --secure` cluster: a CA, the brokers' certificate,
SCRAM users, the client config files that `snf --kafka-config` reads, and the ACLs
of its clients.

Made with `openssl` into `<cluster dir>/tls/` (PEM, which Kafka reads as
`ssl.keystore.type=PEM`); the SCRAM users are created when the storage is
formatted (`kafka-storage format --add-scram`): `admin` (the brokers, a super
user), `snf` (every snf client) and `capture` (a capture agent, no rights until
`snf kafka acls` gives it a pipeline's ingress). Everything secret is mode 0600.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
from pathlib import Path

from snf.kafka import acls
from snf.kafka.errors import BrokerError
from snf.kafka.kraft_config import ADMIN_USER, HOST, SCRAM, ClusterInfo, SecureSetup
from snf.kafka.security import load

__all__ = [
    "CAPTURE_USER",
    "CLIENT_USER",
    "grant_clients",
    "prepare",
    "scram_args",
    "user_config",
    "write_client_config",
    "write_client_configs",
]

CLIENT_USER = "snf"  # what snf's clients authenticate as
CAPTURE_USER = "capture"  # the one writer of a pipeline's ingress, once `snf kafka acls` ran
# snf.pipeline.names.PREFIX + ".": every topic, group and transactional id snf names.
CLIENT_PREFIX = "snf."
CONFIG_FILES = {
    CLIENT_USER: "client.properties",
    CAPTURE_USER: "capture.properties",
    ADMIN_USER: "admin.properties",
}
DAYS = "825"  # the longest validity macOS and browsers accept; a local cluster lives less


def _openssl(*args: str, cwd: Path) -> None:
    tool = shutil.which("openssl")
    if tool is None:
        raise BrokerError("`openssl` is not on PATH; `snf kafka up --secure` needs it")
    done = subprocess.run([tool, *args], cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise BrokerError(f"openssl {args[0]} failed: {done.stderr.strip()[-400:]}")


def _private(path: Path, text: str) -> Path:
    """Write a secret file that only its owner may read (created so, never 0644 first)."""
    path.unlink(missing_ok=True)
    path.touch(mode=0o600)
    path.write_text(text, encoding="utf-8")
    return path


def make_tls(tls_dir: Path) -> tuple[Path, Path]:
    """(CA certificate, broker keystore): a CA and a certificate for HOST it signed.

    EC P-256 keys (generated instantly); the broker's key is PKCS#8, as Kafka's
    PEM keystore requires, and unencrypted: it is readable by its owner only.
    """
    tls_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-noenc"]
    _openssl(
        "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", DAYS,
        "-subj", "/CN=snf local Kafka CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=tls_dir,
    )  # fmt: skip
    _openssl("req", *ec, "-keyout", "broker.key", "-out", "broker.csr", "-subj", f"/CN={HOST}",
             cwd=tls_dir)  # fmt: skip
    (tls_dir / "broker.ext").write_text(
        f"subjectAltName=IP:{HOST},DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n"
    )
    _openssl(
        "x509", "-req", "-in", "broker.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "broker.crt", "-days", DAYS, "-extfile", "broker.ext",
        cwd=tls_dir,
    )  # fmt: skip
    for name in ("ca.key", "broker.key"):
        (tls_dir / name).chmod(0o600)
    # The key first, then the chain from the leaf up.
    parts = [(tls_dir / n).read_text() for n in ("broker.key", "broker.crt", "ca.pem")]
    keystore = _private(tls_dir / "broker-keystore.pem", "".join(parts))
    return tls_dir / "ca.pem", keystore


def prepare(cluster_dir: Path) -> SecureSetup:
    """Certificates and fresh passwords for a new secure cluster in `cluster_dir`."""
    ca, keystore = make_tls(cluster_dir / "tls")
    users = {user: secrets.token_urlsafe(24) for user in (CLIENT_USER, CAPTURE_USER)}
    return SecureSetup(ca, keystore, secrets.token_urlsafe(24), users)


def scram_args(setup: SecureSetup) -> list[str]:
    """`StorageTool format` arguments creating every SCRAM user (KRaft, Kafka >= 3.5)."""
    out = []
    for name, password in setup.scram_users.items():
        out += ["--add-scram", f"{SCRAM}=[name={name},password={password}]"]
    return out


def write_client_config(
    path: Path, setup: SecureSetup, cluster: str, user: str = CLIENT_USER
) -> Path:
    """The client settings of `user` on the cluster (snf.kafka.security's keys), mode 0600."""
    lines = [
        f"# Written by `snf kafka up --secure --name {cluster}`: use it with",
        f"#   snf --kafka-config {path} ...",
        "security.protocol=SASL_SSL",
        f"sasl.mechanism={SCRAM}",
        f"sasl.username={user}",
        f"sasl.password={setup.scram_users[user]}",
        f"ssl.ca.location={setup.ca}",
    ]
    return _private(path, "\n".join(lines) + "\n")


def write_client_configs(cluster_dir: Path, setup: SecureSetup, cluster: str) -> Path:
    """One file per user (CONFIG_FILES) in `cluster_dir`; returns `snf`'s, client.properties."""
    for user, name in CONFIG_FILES.items():
        write_client_config(cluster_dir / name, setup, cluster, user)
    return cluster_dir / CONFIG_FILES[CLIENT_USER]


def user_config(info: ClusterInfo, user: str) -> Path:
    """The client config of `user` on secure cluster `info`: next to client.properties."""
    if not info.client_config:
        raise BrokerError(f"Kafka cluster {info.name!r} is not secure: it has no users")
    return Path(info.client_config).with_name(CONFIG_FILES[user])


def grant_clients(info: ClusterInfo) -> None:
    """As `admin`: `snf` may do all a one-shot `snf run` does on names starting `snf.`."""
    admin = load(user_config(info, ADMIN_USER))
    acls.apply_acls(info.bootstrap, acls.client_acls(CLIENT_USER, CLIENT_PREFIX), admin)
