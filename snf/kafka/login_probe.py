"""Why a secured broker turned us away: one TLS + SASL login, by hand, on a blocking socket.

kafka-python retries a failed login until its bootstrap timeout and then reports
a timeout only; and when the broker's error response and its closing of the
connection arrive together, it drops the response and sees "socket
disconnected". So after a failed connect, snf logs in once itself to name the
cause: TLS verification, an unknown mechanism, or wrong credentials.

The requests are Kafka's non-flexible SaslHandshake v1 (key 17) and
SaslAuthenticate v0 (key 36), each with a request header v1; the SCRAM
exchange itself is kafka-python's ScramClient.
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import struct
from collections.abc import Iterator

from kafka.net.sasl.scram import ScramClient

from snf.kafka.errors import BrokerError
from snf.kafka.security import CONFIG_ENV, KafkaSecurity, current

__all__ = ["login_failure", "refusals"]

_HANDSHAKE, _AUTHENTICATE = 17, 36
_ERRORS = {33: "the broker does not accept this sasl.mechanism", 58: "authentication failed"}


def _string(text: str) -> bytes:
    data = text.encode()
    return struct.pack(">h", len(data)) + data


class _Conn:
    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.correlation = sock, 0

    def call(self, api_key: int, version: int, body: bytes) -> bytes:
        self.correlation += 1
        header = struct.pack(">hhi", api_key, version, self.correlation) + _string("snf-probe")
        request = header + body
        self.sock.sendall(struct.pack(">i", len(request)) + request)
        (size,) = struct.unpack(">i", self._exactly(4))
        return self._exactly(size)[4:]  # after the correlation id

    def _exactly(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("the broker closed the connection")
            data += chunk
        return data


def _authenticate(conn: _Conn, token: bytes) -> bytes:
    """One SaslAuthenticate round: the server's bytes, or ValueError naming the refusal."""
    reply = conn.call(_AUTHENTICATE, 0, struct.pack(">i", len(token)) + token)
    (error,) = struct.unpack(">h", reply[:2])
    (length,) = struct.unpack(">h", reply[2:4])
    message = reply[4 : 4 + length].decode(errors="replace") if length > 0 else ""
    if error:
        cause = _ERRORS.get(error, f"SASL error {error}")
        raise ValueError(f"{cause}: {message}" if message else cause)
    rest = reply[4 + max(length, 0) :]
    (size,) = struct.unpack(">i", rest[:4])
    return rest[4 : 4 + size]


def _login(conn: _Conn, sec: KafkaSecurity) -> None:
    mechanism = str(sec.sasl_mechanism)
    reply = conn.call(_HANDSHAKE, 1, _string(mechanism))
    (error,) = struct.unpack(">h", reply[:2])
    if error:
        raise ValueError(_ERRORS.get(error, f"SASL handshake error {error}"))
    user = sec.sasl_username or ""
    password = sec.sasl_password.get_secret_value() if sec.sasl_password else ""
    if mechanism == "PLAIN":
        _authenticate(conn, f"\0{user}\0{password}".encode())
        return
    scram = ScramClient(user, password, mechanism)
    scram.process_server_first_message(_authenticate(conn, scram.first_message()))
    scram.process_server_final_message(_authenticate(conn, scram.final_message()))


def login_failure(bootstrap: str, sec: KafkaSecurity, timeout: float = 5.0) -> str | None:
    """Why logging in to the first answering address of `bootstrap` fails; None when
    it succeeds or nothing answers (then the cause is not the login)."""
    for hostport in bootstrap.split(","):
        host, _, port = hostport.strip().rpartition(":")
        try:
            raw = socket.create_connection((host, int(port)), timeout=timeout)
        except (OSError, ValueError):
            continue
        try:
            context = sec.ssl_context()
            sock = context.wrap_socket(raw, server_hostname=host) if context else raw
            if sec.sasl:
                _login(_Conn(sock), sec)
            return None
        except ssl.SSLCertVerificationError as exc:
            reason = exc.verify_message or str(exc)
            return f"TLS: the broker's certificate is not trusted ({reason}); check ssl.ca.location"
        except ssl.SSLError as exc:
            return f"TLS handshake failed ({exc.reason or exc}); check security.protocol, ssl.*"
        except ValueError as exc:
            return str(exc)
        except (OSError, struct.error):
            return None  # closed on us or garbled: not a refusal we can name
        finally:
            raw.close()
    return None


@contextlib.contextmanager
def refusals(bootstrap: str, security: KafkaSecurity | None = None) -> Iterator[None]:
    """Re-raise a failure to connect with TLS or SASL as a BrokerError naming the cause,
    when a login of our own shows one (`security` defaults to the process's)."""
    try:
        yield
    except Exception:
        sec = security if security is not None else current()
        if sec is None or sec.security_protocol == "PLAINTEXT":
            raise
        cause = login_failure(bootstrap, sec)
        if cause is None:
            raise
        if cause.startswith("authentication failed"):
            where = os.environ.get(CONFIG_ENV) or "the SNF_KAFKA_* variables"
            cause += f"; check sasl.username and sasl.password ({where})"
        raise BrokerError(f"Kafka at {bootstrap} refused us: {cause}") from None
