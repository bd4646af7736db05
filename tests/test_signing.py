"""tdxupdate.signing: pure-Python RSA, cross-checked against ``cryptography`` both ways."""

from __future__ import annotations

import hashlib
import json
import random
import re

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from factories.images import make_image, test_key, trusted_signers

from tdxupdate.image import Sigstruct
from tdxupdate.imagebuild import make_sigstruct
from tdxupdate.imagecheck import _compute_signature_check, verify
from tdxupdate.signing import (
    SHA384_DIGEST_INFO,
    RsaKey,
    emsa_pkcs1_v15_sha384,
    generate_key,
    is_probable_prime,
)
from tdxupdate.versions import Version


@pytest.fixture(scope="module")
def pure_key() -> RsaKey:
    """One pure-Python RSA-3072 key for the module (generation takes a few seconds)."""
    return generate_key()


def _public(key: RsaKey) -> rsa.RSAPublicKey:
    return rsa.RSAPublicNumbers(key.e, key.n).public_key()


def test_generated_key_has_the_sigstruct_shape(pure_key: RsaKey) -> None:
    assert pure_key.n.bit_length() == 3072
    assert pure_key.e == 65537
    assert pure_key.p is not None
    assert pure_key.q is not None
    assert pure_key.p * pure_key.q == pure_key.n
    assert is_probable_prime(pure_key.p)
    assert is_probable_prime(pure_key.q)
    assert len(pure_key.modulus_le()) == 384
    assert int.from_bytes(pure_key.modulus_le(), "little") == pure_key.n
    assert pure_key.fingerprint == hashlib.sha256(pure_key.modulus_le()).hexdigest()


def test_pure_signature_verifies_with_cryptography(pure_key: RsaKey) -> None:
    message = b"sigstruct header and body"
    signature = pure_key.sign(message).to_bytes(384, "big")
    _public(pure_key).verify(signature, message, padding.PKCS1v15(), hashes.SHA384())
    with pytest.raises(InvalidSignature):
        _public(pure_key).verify(signature, message + b"!", padding.PKCS1v15(), hashes.SHA384())


def test_pure_signed_image_verifies_with_the_pure_verifier(pure_key: RsaKey) -> None:
    image = make_image("1.5.08", key=pure_key)
    v = verify(image, trusted_signers={pure_key.fingerprint}, expected_version=Version(1, 5, 8))
    assert v.ok, v.failed


def test_cryptography_signature_verifies_with_the_pure_verifiers() -> None:
    key = test_key()
    message = b"\x06\x00\x00\x00" * 100
    signature = key.sign(message)  # made by cryptography
    assert key.as_rsa_key().public_verify(message, signature)
    assert not key.as_rsa_key().public_verify(message + b"\0", signature)
    sigstruct = make_sigstruct(module=b"\xcc" * 4096, key=key, cpuid_table=(0x806F8,))
    assert _compute_signature_check(Sigstruct.parse(sigstruct)).ok


def test_pure_signing_with_a_cryptography_key_gives_the_same_signature() -> None:
    # PKCS#1 v1.5 is deterministic: the same key and message give the same bytes.
    key = test_key()
    pure = key.as_rsa_key()
    for message in (b"", b"x", bytes(range(256)) * 5):
        assert pure.sign(message) == key.sign(message)


def test_crt_and_plain_exponentiation_agree(pure_key: RsaKey) -> None:
    plain = RsaKey(n=pure_key.n, e=pure_key.e, d=pure_key.d)
    assert plain.sign(b"message") == pure_key.sign(b"message")


def test_encoding_is_what_cryptography_signs() -> None:
    key = test_key()
    message = b"body"
    em = pow(key.sign(message), key.e, key.n).to_bytes(384, "big")
    assert em == emsa_pkcs1_v15_sha384(message, 384)
    assert em[:2] == b"\x00\x01"
    assert em[-67:-48] == SHA384_DIGEST_INFO
    assert em[-48:] == hashlib.sha384(message).digest()
    assert set(em[2 : 384 - 68]) == {0xFF}
    assert em[384 - 68] == 0


def test_encoding_needs_room_for_the_digest_info() -> None:
    with pytest.raises(ValueError, match="a 64-byte modulus is too short"):
        emsa_pkcs1_v15_sha384(b"m", 64)


def test_seeded_generation_is_reproducible() -> None:
    a = generate_key(1024, rng=random.Random(7))
    b = generate_key(1024, rng=random.Random(7))
    c = generate_key(1024, rng=random.Random(8))
    assert a == b
    assert a.n != c.n
    assert a.n.bit_length() == 1024
    assert a.public_verify(b"m", a.sign(b"m"))


@pytest.mark.parametrize("bits", [512, 1025])
def test_unusable_key_sizes_are_refused(bits: int) -> None:
    with pytest.raises(ValueError, match=f"key size {bits} bits: must be even and at least 1024"):
        generate_key(bits)


def test_miller_rabin_agrees_with_a_sieve() -> None:
    limit = 20000
    sieve = bytearray([1]) * limit
    sieve[0:2] = b"\0\0"
    for i in range(2, int(limit**0.5) + 1):
        if sieve[i]:
            sieve[i * i :: i] = bytearray(len(sieve[i * i :: i]))
    assert [n for n in range(limit) if is_probable_prime(n)] == [
        n for n in range(limit) if sieve[n]
    ]


@pytest.mark.parametrize(
    ("n", "prime"),
    [
        (561, False),  # Carmichael numbers fool the Fermat test, not Miller–Rabin
        (41041, False),
        (3825123056546413051, False),  # strong pseudoprime to bases 2..23
        (2**127 - 1, True),
        (2**521 - 1, True),
        (2**521 + 1, False),
        ((2**89 - 1) * (2**107 - 1), False),
    ],
)
def test_miller_rabin_on_known_numbers(n: int, prime: bool) -> None:
    assert is_probable_prime(n) is prime


def test_json_round_trip(pure_key: RsaKey) -> None:
    text = pure_key.to_json()
    assert json.loads(text)["type"] == "rsa-private-key"
    assert RsaKey.from_json(text) == pure_key
    assert RsaKey.from_json(text.encode()) == pure_key
    assert RsaKey.from_json(json.loads(text)) == pure_key
    without_factors = RsaKey(n=pure_key.n, e=pure_key.e, d=pure_key.d)
    assert RsaKey.from_json(without_factors.to_json()) == without_factors


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"type": "x"}, 'not an RSA key: expected an object with "type": "rsa-private-key"'),
        ({"n": 5}, "RSA key: $.n: expected a hex string, got 5"),
        ({"d": "0xzz"}, "RSA key: $.d: '0xzz' is not a hex number"),
        ({"d": "0x3"}, "RSA key: n, e and d do not form a key pair"),
        ({"p": "0x3"}, "RSA key: p and q must both be given and multiply to n"),
    ],
    ids=["type", "n-not-string", "d-not-hex", "d-wrong", "p-wrong"],
)
def test_json_errors_name_the_field(change: dict[str, object], message: str) -> None:
    key = generate_key(1024, rng=random.Random(1))
    doc = json.loads(key.to_json()) | change
    with pytest.raises(ValueError, match=re.escape(message)) as exc:
        RsaKey.from_json(doc)
    assert str(exc.value) == message


def test_factory_trust_list_holds_the_test_key() -> None:
    assert test_key().fingerprint in trusted_signers()
    assert test_key().as_rsa_key().fingerprint == test_key().fingerprint
