"""ESP (RFC 4303) payload transform: seal and open one SA's packets, no I/O.

Ciphers
    aes-gcm-128, aes-gcm-256
        RFC 4106: 8-byte explicit IV, 16-byte ICV, nonce = salt || IV.
        Key material = AES key || 4-byte salt (RFC 4106 §8.1).
    aes-cbc-128-hmac-sha256, aes-cbc-256-hmac-sha256
        RFC 3602 + RFC 4868: 16-byte IV, HMAC-SHA-256 truncated to 16 bytes.
        Key material = AES key || 32-byte HMAC key.

IVs are deterministic and unique per key, derived from the 64-bit sequence
number, so the caller must never seal two packets with one seq under one key
(RFC 4303 forbids seq reuse anyway; rekey before it would wrap).
    GCM: IV = seq (big-endian), the counter RFC 4106 §3.1 allows.
    CBC: IV = AES-ECB_K(SPI || seq || 0^32), the unpredictable nonce-derived IV
    of NIST SP 800-38A Appendix C, under the same encryption key.

ESN (RFC 4303 §2.2.1): only the low 32 bits of seq go on the wire; the high
32 bits go into the GCM AAD (RFC 4106 §5) or are appended to the HMAC input.

All crypto is OpenSSL through `cryptography`. A transform keeps stateful
cipher contexts, so one instance must not be used by two threads at once.
"""

from __future__ import annotations

import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import constant_time, hashes, hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = [
    "CIPHERS",
    "KEY_BYTES",
    "EspAuthError",
    "EspError",
    "EspFormatError",
    "EspTransform",
    "esp_header",
]

CIPHERS: tuple[str, ...] = (
    "aes-gcm-128",
    "aes-gcm-256",
    "aes-cbc-128-hmac-sha256",
    "aes-cbc-256-hmac-sha256",
)

# AES key length per cipher; the rest of the key material is salt or HMAC key.
_AES_BYTES: dict[str, int] = {
    "aes-gcm-128": 16,
    "aes-gcm-256": 32,
    "aes-cbc-128-hmac-sha256": 16,
    "aes-cbc-256-hmac-sha256": 32,
}
_SALT_BYTES = 4
_HMAC_KEY_BYTES = 32

KEY_BYTES: dict[str, int] = {
    name: aes + (_SALT_BYTES if name.startswith("aes-gcm") else _HMAC_KEY_BYTES)
    for name, aes in _AES_BYTES.items()
}

_HEADER_BYTES = 8
_ICV_BYTES = 16
_BLOCK = 16
_SEQ32 = 1 << 32
_SEQ64 = 1 << 64

_HEADER = struct.Struct("!II")  # SPI, low 32 bits of seq
_AAD_ESN = struct.Struct("!III")  # SPI, seq high, seq low (RFC 4106 §5)
_SEQ_HI = struct.Struct("!I")
_GCM_IV = struct.Struct("!Q")
_CBC_NONCE = struct.Struct("!IQ4x")  # SPI, seq, 4 zero bytes: one AES block

# RFC 4303 §2.4 default padding: 1, 2, 3, ...
_PAD = bytes(range(1, 256))


class EspError(Exception):
    """Base of the ESP errors; `reason` is the drop reason to count."""

    reason = "esp_error"


class EspFormatError(EspError):
    """Too short, not whole blocks, or bad padding."""

    reason = "malformed"


class EspAuthError(EspError):
    """The ICV does not match."""

    reason = "auth_failed"


def esp_header(esp: bytes) -> tuple[int, int]:
    """(SPI, 32-bit sequence number) of an ESP packet (the bytes from the ESP header on)."""
    if len(esp) < _HEADER_BYTES:
        raise EspFormatError(f"ESP packet of {len(esp)} bytes, shorter than its header")
    spi, seq = _HEADER.unpack_from(esp)
    return spi, seq


class EspTransform:
    """One SA's cipher: seal and open ESP payloads."""

    def __init__(self, cipher: str, key: bytes, spi: int, *, esn: bool = False) -> None:
        if cipher not in KEY_BYTES:
            raise ValueError(f"unknown ESP cipher {cipher!r}, expected one of {CIPHERS}")
        if len(key) != KEY_BYTES[cipher]:
            raise ValueError(
                f"{cipher} takes {KEY_BYTES[cipher]} bytes of key material, got {len(key)}"
            )
        if not 0 <= spi < _SEQ32:
            raise ValueError(f"SPI {spi} is not a 32-bit number")
        self.cipher = cipher
        self.spi = spi
        self.esn = esn
        self._gcm = cipher.startswith("aes-gcm")
        aes_key = bytes(key[: _AES_BYTES[cipher]])
        rest = bytes(key[_AES_BYTES[cipher] :])
        self._seq_limit = _SEQ64 if esn else _SEQ32
        if self._gcm:
            self._aead = AESGCM(aes_key)
            self._salt = rest
            self._iv_bytes = 8
            self._align = 4  # RFC 4303 §2.4: the trailer ends on a 4-byte boundary
        else:
            self._aes = algorithms.AES(aes_key)
            # ECB has no chaining state, so one long-lived context serves every IV.
            self._ecb = Cipher(self._aes, modes.ECB()).encryptor()
            self._ecb_dec = Cipher(self._aes, modes.ECB()).decryptor()
            # One long-lived CBC context for every packet (a new one costs ~3.6 us):
            # fed nonce XOR its last output block first, it outputs E(nonce), the
            # derived IV, then CBC under that IV: the same bytes as a fresh context.
            self._chain = Cipher(self._aes, modes.CBC(bytes(_BLOCK))).encryptor()
            self._chain_last = bytes(_BLOCK)
            # Keyed once; copy() per packet skips re-deriving the HMAC pads.
            self._mac = hmac.HMAC(rest, hashes.SHA256())
            self._iv_bytes = _BLOCK
            self._align = _BLOCK
        self._fixed = _HEADER_BYTES + self._iv_bytes + 2 + _ICV_BYTES
        # Smallest packet with room for a trailer: 2 bytes (GCM) or one block (CBC).
        # GCM's 4-byte alignment is the sender's duty (RFC 4303 §2.4), not checked here.
        smallest = 2 if self._gcm else _BLOCK
        self._min_len = _HEADER_BYTES + self._iv_bytes + smallest + _ICV_BYTES

    def overhead(self, inner_len: int) -> int:
        """Bytes seal() adds to an inner packet of `inner_len` bytes."""
        return self._fixed + (-(inner_len + 2)) % self._align

    def seal(self, seq: int, next_header: int, inner: bytes) -> bytes:
        """ESP packet (from the ESP header on) carrying `inner` with full sequence number `seq`."""
        self._check_seq(seq)
        if not 0 <= next_header <= 255:
            raise ValueError(f"next header {next_header} is not a byte")
        pad = (-(len(inner) + 2)) % self._align
        plaintext = b"".join((inner, _PAD[:pad], bytes((pad, next_header))))
        if self._gcm:
            return self._seal(seq, self._iv(seq), plaintext)
        nonce = _CBC_NONCE.pack(self.spi, seq)
        out = self._chain.update(_xor(nonce, self._chain_last) + plaintext)
        self._chain_last = out[-_BLOCK:]
        header = _HEADER.pack(self.spi, seq & 0xFFFFFFFF)
        return b"".join((header, out, self._icv(seq, header, out)))

    def seal_padded(self, seq: int, iv: bytes, plaintext: bytes) -> bytes:
        """Lower layer of seal(): an explicit IV and a plaintext that already ends in
        padding, pad length and next header. For known-answer tests and crafted packets;
        a wrong IV choice here breaks the uniqueness seal() guarantees."""
        self._check_seq(seq)
        if len(iv) != self._iv_bytes:
            raise ValueError(f"{self.cipher} takes a {self._iv_bytes}-byte IV, got {len(iv)}")
        if not self._gcm and (not plaintext or len(plaintext) % _BLOCK):
            raise ValueError(f"CBC plaintext of {len(plaintext)} bytes is not whole blocks")
        return self._seal(seq, bytes(iv), bytes(plaintext))

    def open(self, esp: bytes, seq: int) -> tuple[int, bytes]:
        """(next_header, inner) of the ESP packet `esp` whose full sequence number is `seq`.

        A header that is not this SA's SPI and the low bits of `seq`, or a wrong guess
        of the ESN high bits (they only enter the ICV), fails with EspAuthError.
        """
        self._check_seq(seq)
        size = len(esp)
        if size < self._min_len:
            raise EspFormatError(
                f"ESP packet of {size} bytes, {self.cipher} needs >= {self._min_len}"
            )
        view = memoryview(esp)
        if view[:_HEADER_BYTES] != _HEADER.pack(self.spi, seq & 0xFFFFFFFF):
            raise EspAuthError(f"ESP header is not SPI {self.spi:#x}, seq {seq & 0xFFFFFFFF}")
        opener = self._open_gcm if self._gcm else self._open_cbc
        return _strip_trailer(opener(view, seq))

    def _check_seq(self, seq: int) -> None:
        if not 0 <= seq < self._seq_limit:
            kind = "64" if self.esn else "32 (no ESN)"
            raise ValueError(f"sequence number {seq} does not fit in {kind} bits")

    def _iv(self, seq: int) -> bytes:
        if self._gcm:
            return _GCM_IV.pack(seq)
        return self._ecb.update(_CBC_NONCE.pack(self.spi, seq))

    def _seal(self, seq: int, iv: bytes, plaintext: bytes) -> bytes:
        header = _HEADER.pack(self.spi, seq & 0xFFFFFFFF)
        if self._gcm:
            sealed = self._aead.encrypt(self._salt + iv, plaintext, self._aad(seq))
            return b"".join((header, iv, sealed))
        encryptor = Cipher(self._aes, modes.CBC(iv)).encryptor()
        ciphertext = encryptor.update(plaintext) + encryptor.finalize()
        icv = self._icv(seq, header, iv, ciphertext)
        return b"".join((header, iv, ciphertext, icv))

    def _aad(self, seq: int) -> bytes:
        if self.esn:
            return _AAD_ESN.pack(self.spi, seq >> 32, seq & 0xFFFFFFFF)
        return _HEADER.pack(self.spi, seq)

    def _icv(self, seq: int, *parts: bytes | memoryview) -> bytes:
        mac = self._mac.copy()
        for part in parts:
            mac.update(part)
        # RFC 4303 §2.2.1: the ESN high bits are authenticated but never sent.
        if self.esn:
            mac.update(_SEQ_HI.pack(seq >> 32))
        return mac.finalize()[:_ICV_BYTES]

    def _open_gcm(self, view: memoryview, seq: int) -> bytes:
        # open() checked the wire header, so the AAD can be built from SPI and seq.
        iv = bytes(view[_HEADER_BYTES : _HEADER_BYTES + 8])
        try:
            return self._aead.decrypt(self._salt + iv, view[_HEADER_BYTES + 8 :], self._aad(seq))
        except InvalidTag:
            raise EspAuthError("ICV mismatch") from None

    def _open_cbc(self, view: memoryview, seq: int) -> bytes:
        start = _HEADER_BYTES + _BLOCK
        end = len(view) - _ICV_BYTES
        if (end - start) % _BLOCK:
            raise EspFormatError(f"CBC ciphertext of {end - start} bytes is not whole blocks")
        icv = self._icv(seq, view[:end])
        if not constant_time.bytes_eq(icv, bytes(view[end:])):
            raise EspAuthError("ICV mismatch")
        # Decrypt only once authenticated: no padding oracle (RFC 4303 §3.4.4.1).
        # CBC by hand over one long-lived ECB context: P_i = D(C_i) XOR C_(i-1).
        return _xor(self._ecb_dec.update(view[start:end]), view[_HEADER_BYTES : end - _BLOCK])


def _xor(a: bytes | memoryview, b: bytes | memoryview) -> bytes:
    """a XOR b, of equal lengths."""
    n = len(a)
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(n, "big")


def _strip_trailer(plaintext: bytes) -> tuple[int, bytes]:
    """(next header, inner) of a decrypted payload; checks the RFC 4303 §2.4 padding."""
    if len(plaintext) < 2:
        raise EspFormatError("ESP payload too short for its trailer")
    pad, next_header = plaintext[-2], plaintext[-1]
    end = len(plaintext) - 2 - pad
    if end < 0:
        raise EspFormatError(f"pad length {pad} exceeds the {len(plaintext) - 2}-byte payload")
    if plaintext[end:-2] != _PAD[:pad]:
        raise EspFormatError("padding is not 1, 2, 3, ...")
    return next_header, plaintext[:end]
