"""Password hashes for the console's accounts: scrypt from the standard library (hashlib), so
no extra native dependency, in a self-describing string ``scrypt$N$r$p$salt$hash`` (base64).

Checking one costs about 50 ms of CPU and 16 MiB of memory (N=2**14, r=8): the server runs it in
a worker thread, never on the event loop, and rate-limits login attempts before it. The process
keeps those 16 MiB once a second login has run (the allocator holds on to them; measured, not per
login: bench/web_console.py; malloc_trim does not give them back).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

N, R, P = 2**14, 8, 1
KEY_BYTES = 32
_MAX_N = 2**17   # a hash naming a larger cost would let a config stall every login


def hash_password(password: str, *, n: int = N, r: int = R, p: int = P) -> str:
    salt = os.urandom(16)
    key = _scrypt(password, salt, n, r, p)
    return "$".join(["scrypt", str(n), str(r), str(p), _b64(salt), _b64(key)])


def check_format(encoded: str) -> str | None:
    """What is wrong with a stored hash, or None."""
    parts = encoded.split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        return "expected a hash 'scrypt$N$r$p$salt$hash'"
    try:
        n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt, key = _unb64(parts[4]), _unb64(parts[5])
    except ValueError:
        return "the hash's numbers or base64 parts are damaged"
    if not (2 <= n <= _MAX_N and n & (n - 1) == 0 and 1 <= r <= 32 and 1 <= p <= 4):
        return f"scrypt parameters out of range (N a power of two up to {_MAX_N}, r 1..32, p 1..4)"
    if len(salt) < 8 or len(key) < 16:
        return "the hash's salt or key is too short"
    return None


def verify(password: str, encoded: str) -> bool:
    """True when ``password`` matches; blocking (about 50 ms): call it in a worker thread."""
    if check_format(encoded) is not None:
        return False
    _, n, r, p, salt, key = encoded.split("$")
    expected = _unb64(key)
    return hmac.compare_digest(_scrypt(password, _unb64(salt), int(n), int(r), int(p), len(expected)), expected)


_dummy: str | None = None


def dummy() -> str:
    """A hash no password matches: an account that does not exist is checked against it, so a
    wrong name costs the same time as a wrong password and the answer gives no hint which."""
    global _dummy
    if _dummy is None:
        _dummy = hash_password(os.urandom(16).hex())
    return _dummy


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, length: int = KEY_BYTES) -> bytes:
    return hashlib.scrypt(password.encode("utf-8", "surrogatepass"), salt=salt, n=n, r=r, p=p, dklen=length,
                          maxmem=256 * r * n + 2**20)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    import binascii
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(str(exc)) from None


def web_passwd(name: str, role: str, from_stdin: bool) -> int:
    """``edge-agent web-passwd NAME``: asks for a password twice (or reads one line from stdin)
    and prints the account entry for the ``web: accounts:`` list of the config."""
    import getpass
    import re
    import sys
    if not re.fullmatch(r"[A-Za-z0-9_.@-]{1,64}", name):
        print("web-passwd: a name is 1-64 of A-Z a-z 0-9 _ . @ -", file=sys.stderr)
        return 2
    if from_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass(f"password for {name}: ")
        if getpass.getpass("again: ") != password:
            print("web-passwd: the two passwords differ; nothing written", file=sys.stderr)
            return 1
    if len(password) < 10:
        print("web-passwd: use at least 10 characters (a gateway's console faces a street cabinet)", file=sys.stderr)
        return 1
    print(f'    - {{name: {name}, role: {role}, password_hash: "{hash_password(password)}"}}')
    return 0
