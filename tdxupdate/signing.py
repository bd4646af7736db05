"""Pure-Python RSA for the sigstruct signature (image-formats.md §4.3).

The verifier in :mod:`tdxupdate.imagecheck` needs only :func:`emsa_pkcs1_v15_sha384`; the rest
(key generation, signing, JSON) exists so the emulator's sample repository and the tests can
forge images signed by a key of their own without a crypto library at run time. Nothing here
is meant to protect a secret: keys are generated for throw-away test repositories.

RSA with e = 65537, PKCS#1 v1.5 (RFC 8017 §8.2, §9.2) over SHA-384, the scheme P-SEAMLDR checks.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # key generation only: the verifier does not import them
    import random

#: DER of DigestInfo{AlgorithmIdentifier{id-sha384 (2.16.840.1.101.3.4.2.2), NULL},
#: OCTET STRING(48)} (RFC 8017 §9.2 note 1); the 48-byte digest follows it.
SHA384_DIGEST_INFO = bytes.fromhex("3041300d060960864801650304020205000430")

PUBLIC_EXPONENT = 65537


# Candidates sharing a factor with this product are discarded with one gcd before the
# expensive Miller–Rabin rounds; primes below 2000 remove about 85 % of odd candidates.
# Computed on first use: verifying (every run) needs neither.
@functools.cache
def _small_primes() -> tuple[int, ...]:
    return tuple(p for p in range(3, 2000, 2) if all(p % q for q in range(3, math.isqrt(p) + 1, 2)))


@functools.cache
def _small_primorial() -> int:
    return math.prod(_small_primes())


# FIPS 186-5 table B.1 asks for 4 rounds for 1536-bit factors with random bases; 16 costs
# little more and keeps small test keys (1024 bits) just as safe from composites.
_MILLER_RABIN_ROUNDS = 16


def emsa_pkcs1_v15_sha384(message: bytes, k: int) -> bytes:
    """EMSA-PKCS1-v1_5 encoding of SHA-384(``message``) into ``k`` bytes (RFC 8017 §9.2).

    ``00 01 FF…FF 00 || DigestInfo || digest``; at least 8 bytes of FF are required.
    """
    t = SHA384_DIGEST_INFO + hashlib.sha384(message).digest()
    if k < len(t) + 11:
        raise ValueError(f"a {k}-byte modulus is too short for a SHA-384 PKCS#1 v1.5 signature")
    return b"\x00\x01" + b"\xff" * (k - len(t) - 3) + b"\x00" + t


def is_probable_prime(n: int, rng: random.Random | None = None) -> bool:
    """Miller–Rabin with random bases after trial division by the primes below 2000."""
    if n < 2:
        return False
    for p in (2, *_small_primes()):
        if n % p == 0:
            return n == p
    import random

    r = random.Random(n) if rng is None else rng
    d, s = n - 1, 0
    while d % 2 == 0:
        d //= 2
        s += 1
    for _ in range(_MILLER_RABIN_ROUNDS):
        x = pow(r.randrange(2, n - 1), d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


def _random_prime(bits: int, e: int, rng: random.Random) -> int:
    while True:
        # The top two bits set make the product of two such primes exactly 2*bits long.
        candidate = rng.getrandbits(bits) | (0b11 << (bits - 2)) | 1
        if math.gcd(candidate, _small_primorial()) != 1:
            continue
        if math.gcd(candidate - 1, e) != 1:
            continue
        if is_probable_prime(candidate, rng):
            return candidate


@dataclass(frozen=True)
class RsaKey:
    """An RSA private key; ``p``/``q`` are optional and only speed up signing (CRT)."""

    n: int
    e: int
    d: int
    p: int | None = None
    q: int | None = None

    @property
    def size_bytes(self) -> int:
        return (self.n.bit_length() + 7) // 8

    def modulus_le(self) -> bytes:
        """The modulus as the sigstruct stores it: a little-endian integer of the key's size."""
        return self.n.to_bytes(self.size_bytes, "little")

    @property
    def fingerprint(self) -> str:
        """SHA-256 hex of :meth:`modulus_le`: the signer identity of image-formats.md §4.4."""
        return hashlib.sha256(self.modulus_le()).hexdigest()

    def sign(self, message: bytes) -> int:
        """PKCS#1 v1.5 SHA-384 signature of ``message`` (RSASSA-PKCS1-v1_5-SIGN), as an integer."""
        m = int.from_bytes(emsa_pkcs1_v15_sha384(message, self.size_bytes), "big")
        if self.p is None or self.q is None:
            return pow(m, self.d, self.n)
        # CRT: two half-size exponentiations instead of one full one (about 3x faster).
        p, q = self.p, self.q
        s1 = pow(m, self.d % (p - 1), p)
        s2 = pow(m, self.d % (q - 1), q)
        h = (pow(q, -1, p) * (s1 - s2)) % p
        return s2 + h * q

    def public_verify(self, message: bytes, signature: int) -> bool:
        """Check a signature made by this key (strict comparison of the whole encoded block)."""
        if not 0 <= signature < self.n:
            return False
        em = pow(signature, self.e, self.n).to_bytes(self.size_bytes, "big")
        return em == emsa_pkcs1_v15_sha384(message, self.size_bytes)

    def to_json(self) -> str:
        fields: dict[str, str] = {"n": hex(self.n), "e": hex(self.e), "d": hex(self.d)}
        if self.p is not None and self.q is not None:
            fields |= {"p": hex(self.p), "q": hex(self.q)}
        return json.dumps({"type": "rsa-private-key", **fields}, indent=1)

    @classmethod
    def from_json(cls, data: str | bytes | Mapping[str, Any]) -> RsaKey:
        """Load :meth:`to_json` output (text or an already decoded object); ValueError if bad."""
        obj = json.loads(data) if isinstance(data, str | bytes) else data
        if not isinstance(obj, Mapping) or obj.get("type") != "rsa-private-key":
            raise ValueError('not an RSA key: expected an object with "type": "rsa-private-key"')

        def number(name: str, required: bool = True) -> int | None:
            value = obj.get(name)
            if value is None and not required:
                return None
            if not isinstance(value, str):
                raise ValueError(f"RSA key: $.{name}: expected a hex string, got {value!r}")
            try:
                return int(value, 16)
            except ValueError:
                raise ValueError(f"RSA key: $.{name}: {value!r} is not a hex number") from None

        n, e, d = number("n"), number("e"), number("d")
        assert n is not None
        assert e is not None
        assert d is not None
        p, q = number("p", False), number("q", False)
        if (p is None) != (q is None) or (p is not None and q is not None and p * q != n):
            raise ValueError("RSA key: p and q must both be given and multiply to n")
        if n < 3 or not 1 < e < n or not 1 < d < n or pow(pow(2, e, n), d, n) != 2:
            raise ValueError("RSA key: n, e and d do not form a key pair")
        return cls(n=n, e=e, d=d, p=p, q=q)


def generate_key(bits: int = 3072, *, rng: random.Random | None = None) -> RsaKey:
    """A fresh RSA key with e = 65537 and an exactly ``bits``-bit modulus.

    ``rng`` makes the key reproducible (a seeded :class:`random.Random`); without it the
    system's CSPRNG is used. 3072 bits takes a few seconds in pure Python; sigstructs need
    exactly 3072, smaller keys (at least 1024 bits, room for the SHA-384 DigestInfo) only serve
    quick tests of this module.
    """
    if bits < 1024 or bits % 2:
        raise ValueError(f"key size {bits} bits: must be even and at least 1024")
    import secrets

    source = rng if rng is not None else secrets.SystemRandom()
    e = PUBLIC_EXPONENT
    while True:
        p = _random_prime(bits // 2, e, source)
        q = _random_prime(bits // 2, e, source)
        if p == q:
            continue
        n = p * q
        if n.bit_length() != bits:
            continue
        d = pow(e, -1, math.lcm(p - 1, q - 1))
        return RsaKey(n=n, e=e, d=d, p=max(p, q), q=min(p, q))
