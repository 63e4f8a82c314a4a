"""ESP transform (functions/ipsec/esp.py): round trips, tampering, framing and padding."""

from __future__ import annotations

import pytest

from functions.ipsec.esp import (
    CIPHERS,
    KEY_BYTES,
    EspAuthError,
    EspError,
    EspFormatError,
    EspTransform,
    esp_header,
)

SPI = 0x1000_0001
INNER = bytes(range(256)) * 2 + b"tail"  # 516 bytes, every byte value
GCM = [c for c in CIPHERS if c.startswith("aes-gcm")]
CBC = [c for c in CIPHERS if c.startswith("aes-cbc")]
IV_BYTES = {c: 8 if c in GCM else 16 for c in CIPHERS}
MIN_LEN = {c: 8 + 8 + 2 + 16 if c in GCM else 8 + 16 + 16 + 16 for c in CIPHERS}


def key(cipher: str, fill: int = 0x5A) -> bytes:
    return bytes((fill + i) % 256 for i in range(KEY_BYTES[cipher]))


def sa(cipher: str, *, esn: bool = False, spi: int = SPI) -> EspTransform:
    return EspTransform(cipher, key(cipher), spi, esn=esn)


def flip(data: bytes, i: int) -> bytes:
    return data[:i] + bytes((data[i] ^ 0x01,)) + data[i + 1 :]


def test_key_bytes_match_the_rfcs() -> None:
    assert KEY_BYTES == {
        "aes-gcm-128": 20,
        "aes-gcm-256": 36,
        "aes-cbc-128-hmac-sha256": 48,
        "aes-cbc-256-hmac-sha256": 64,
    }
    assert set(CIPHERS) == set(KEY_BYTES)


@pytest.mark.parametrize("cipher", CIPHERS)
@pytest.mark.parametrize("esn", [False, True])
@pytest.mark.parametrize("size", [0, 1, 13, 14, 15, 16, 17, 100, 1400])
def test_round_trip(cipher: str, esn: bool, size: int) -> None:
    seq = (7 << 32) + 42 if esn else 42
    inner = INNER[:size] if size <= len(INNER) else (INNER * 3)[:size]
    packet = sa(cipher, esn=esn).seal(seq, 4, inner)
    assert esp_header(packet) == (SPI, 42)
    # A second transform from the same key: nothing depends on per-instance state.
    assert sa(cipher, esn=esn).open(packet, seq) == (4, inner)


@pytest.mark.parametrize("cipher", CIPHERS)
def test_esn_high_bits_are_authenticated(cipher: str) -> None:
    t = sa(cipher, esn=True)
    packet = t.seal((3 << 32) + 9, 41, INNER)
    assert esp_header(packet)[1] == 9  # only the low 32 bits on the wire
    for wrong in (9, (2 << 32) + 9, (4 << 32) + 9):
        with pytest.raises(EspAuthError):
            t.open(packet, wrong)
    # Without ESN the high bits are not authenticated at all: only the ICVs differ.
    plain = sa(cipher).seal(9, 41, INNER)
    esn_zero = t.seal(9, 41, INNER)
    assert plain[:-16] == esn_zero[:-16]
    assert plain[-16:] != esn_zero[-16:]
    with pytest.raises(EspAuthError):
        sa(cipher).open(esn_zero, 9)


@pytest.mark.parametrize("cipher", CIPHERS)
def test_seq_range(cipher: str) -> None:
    with pytest.raises(ValueError):
        sa(cipher).seal(1 << 32, 4, INNER)
    with pytest.raises(ValueError):
        sa(cipher, esn=True).seal(1 << 64, 4, INNER)
    with pytest.raises(ValueError):
        sa(cipher).seal(-1, 4, INNER)
    with pytest.raises(ValueError):
        sa(cipher).seal(1, 256, INNER)
    packet = sa(cipher, esn=True).seal((1 << 64) - 1, 4, INNER)
    assert sa(cipher, esn=True).open(packet, (1 << 64) - 1) == (4, INNER)


@pytest.mark.parametrize("cipher", CIPHERS)
@pytest.mark.parametrize("esn", [False, True])
def test_tampering_any_byte_fails_auth(cipher: str, esn: bool) -> None:
    t = sa(cipher, esn=esn)
    seq = (1 << 32) + 5 if esn else 5
    packet = t.seal(seq, 4, INNER[:37])
    for i in range(len(packet)):  # header, IV, ciphertext and ICV alike
        with pytest.raises(EspAuthError) as err:
            t.open(flip(packet, i), seq)
        assert err.value.reason == "auth_failed"


@pytest.mark.parametrize("cipher", CIPHERS)
def test_other_sa_or_key_fails_auth(cipher: str) -> None:
    packet = sa(cipher).seal(5, 4, INNER)
    with pytest.raises(EspAuthError):
        sa(cipher, spi=SPI + 1).open(packet, 5)
    with pytest.raises(EspAuthError):
        EspTransform(cipher, key(cipher, 0x11), SPI).open(packet, 5)
    with pytest.raises(EspAuthError):
        sa(cipher).open(packet, 6)


@pytest.mark.parametrize("cipher", CIPHERS)
def test_truncated_packets_are_malformed(cipher: str) -> None:
    t = sa(cipher)
    packet = t.seal(5, 4, b"")
    assert len(packet) >= MIN_LEN[cipher]
    for size in range(MIN_LEN[cipher]):
        with pytest.raises(EspFormatError) as err:
            t.open(packet[:size], 5)
        assert err.value.reason == "malformed"
    with pytest.raises(EspFormatError):
        esp_header(packet[:7])


@pytest.mark.parametrize("cipher", CBC)
def test_cbc_partial_blocks_are_malformed(cipher: str) -> None:
    t = sa(cipher)
    packet = t.seal(5, 4, INNER)
    for cut in range(1, 16):
        with pytest.raises(EspFormatError):
            t.open(packet[:-cut], 5)
        with pytest.raises(EspFormatError):
            t.open(packet + bytes(cut), 5)


@pytest.mark.parametrize("cipher", GCM)
def test_gcm_truncation_above_minimum_fails_auth(cipher: str) -> None:
    t = sa(cipher)
    packet = t.seal(5, 4, INNER)
    with pytest.raises(EspAuthError):
        t.open(packet[:-1], 5)


def _padded(cipher: str, body: bytes, pad: bytes, pad_len: int) -> bytes:
    """A plaintext with a crafted trailer, sized to whole blocks for CBC."""
    plaintext = body + pad + bytes((pad_len, 4))
    assert cipher in GCM or len(plaintext) % 16 == 0
    return plaintext


@pytest.mark.parametrize("cipher", CIPHERS)
def test_bad_padding_is_malformed(cipher: str) -> None:
    t = sa(cipher)
    iv = bytes(range(IV_BYTES[cipher]))
    bad = [
        _padded(cipher, b"x" * 11, b"\x01\x02\x04", 3),  # not 1, 2, 3
        _padded(cipher, b"x" * 11, b"\x00\x00\x00", 3),  # zeros
        _padded(cipher, b"x" * 14, b"", 200),  # longer than the payload
        _padded(cipher, b"", b"\x01" * 14, 15),  # one byte longer than the payload
    ]
    for plaintext in bad:
        packet = t.seal_padded(5, iv, plaintext)
        with pytest.raises(EspFormatError) as err:
            t.open(packet, 5)
        assert err.value.reason == "malformed"
        assert isinstance(err.value, EspError)
    good = t.seal_padded(5, iv, _padded(cipher, b"x" * 11, b"\x01\x02\x03", 3))
    assert t.open(good, 5) == (4, b"x" * 11)
    whole = t.seal_padded(5, iv, _padded(cipher, b"", bytes(range(1, 15)), 14))
    assert t.open(whole, 5) == (4, b"")


@pytest.mark.parametrize("cipher", CIPHERS)
def test_seal_is_seal_padded_with_the_derived_iv(cipher: str) -> None:
    t = sa(cipher)
    packet = t.seal(77, 4, b"abc")
    iv = packet[8 : 8 + IV_BYTES[cipher]]
    pad = len(packet) - 8 - IV_BYTES[cipher] - 16 - 3 - 2
    assert t.seal_padded(77, iv, b"abc" + bytes(range(1, pad + 1)) + bytes((pad, 4))) == packet


@pytest.mark.parametrize("cipher", GCM)
def test_gcm_iv_is_the_sequence_number(cipher: str) -> None:
    packet = sa(cipher, esn=True).seal(0x0102030405060708, 4, b"")
    assert packet[8:16] == bytes.fromhex("0102030405060708")


@pytest.mark.parametrize("cipher", CBC)
def test_cbc_ivs_are_unique_and_not_the_counter(cipher: str) -> None:
    t = sa(cipher, esn=True)
    seqs = [*range(2000), *((hi << 32) + lo for hi in (1, 2, 0xFFFFFFFF) for lo in range(300))]
    ivs = {t.seal(s, 4, b"")[8:24] for s in seqs}
    assert len(ivs) == len(seqs)
    # The same seq under another SPI (same key) gets another IV too.
    other = EspTransform(cipher, key(cipher), SPI + 1, esn=True)
    assert not ivs & {other.seal(s, 4, b"")[8:24] for s in range(100)}
    # Deterministic: resealing a seq gives the same packet.
    assert t.seal(12, 4, b"abc") == t.seal(12, 4, b"abc")


@pytest.mark.parametrize("cipher", CIPHERS)
def test_overhead_is_exact(cipher: str) -> None:
    t = sa(cipher)
    for size in [*range(41), 1400]:
        inner = bytes(size)
        assert len(t.seal(1, 4, inner)) - size == t.overhead(size), size
    # RFC 4303 §2.4: the ciphertext ends on a 4-byte (GCM) or block (CBC) boundary.
    for size in range(41):
        body = t.overhead(size) + size - 8 - 16 - IV_BYTES[cipher]
        assert body % (4 if cipher in GCM else 16) == 0


@pytest.mark.parametrize("cipher", CIPHERS)
def test_key_length_and_cipher_errors(cipher: str) -> None:
    for size in (0, KEY_BYTES[cipher] - 1, KEY_BYTES[cipher] + 1, 16, 32):
        if size == KEY_BYTES[cipher]:
            continue
        with pytest.raises(ValueError):
            EspTransform(cipher, bytes(size), SPI)
    with pytest.raises(ValueError):
        EspTransform(cipher, key(cipher), 1 << 32)
    with pytest.raises(ValueError):
        sa(cipher).seal_padded(1, bytes(IV_BYTES[cipher] + 1), bytes(16))


def test_unknown_cipher() -> None:
    with pytest.raises(ValueError):
        EspTransform("aes-gcm-192", bytes(28), SPI)
    with pytest.raises(ValueError):
        EspTransform("aes-cbc-128-hmac-sha256", bytes(48), SPI).seal_padded(1, bytes(16), b"x")
