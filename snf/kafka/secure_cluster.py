"""The secrets of a `snf kafka up --secure` cluster: a CA, the brokers' certificate,
SCRAM users, and the client config file that `snf --kafka-config` reads.

Made with `openssl` into `<cluster dir>/tls/` (PEM, which Kafka reads as
`ssl.keystore.type=PEM`); the SCRAM users are created when the storage is
formatted (`kafka-storage format --add-scram`). Everything secret is mode 0600.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
from pathlib import Path

from snf.kafka.errors import BrokerError
from snf.kafka.kraft_config import HOST, SCRAM, SecureSetup

__all__ = ["CLIENT_USER", "prepare", "scram_args", "write_client_config"]

CLIENT_USER = "snf"  # what snf's clients authenticate as
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
    users = {CLIENT_USER: secrets.token_urlsafe(24)}
    return SecureSetup(ca, keystore, secrets.token_urlsafe(24), users)


def scram_args(setup: SecureSetup) -> list[str]:
    """`StorageTool format` arguments creating every SCRAM user (KRaft, Kafka >= 3.5)."""
    out = []
    for name, password in setup.scram_users.items():
        out += ["--add-scram", f"{SCRAM}=[name={name},password={password}]"]
    return out


def write_client_config(path: Path, setup: SecureSetup, cluster: str) -> Path:
    """The client settings of the cluster (snf.kafka.security's keys), mode 0600."""
    lines = [
        f"# Written by `snf kafka up --secure --name {cluster}`: use it with",
        f"#   snf --kafka-config {path} ...",
        "security.protocol=SASL_SSL",
        f"sasl.mechanism={SCRAM}",
        f"sasl.username={CLIENT_USER}",
        f"sasl.password={setup.users[CLIENT_USER]}",
        f"ssl.ca.location={setup.ca}",
    ]
    return _private(path, "\n".join(lines) + "\n")
