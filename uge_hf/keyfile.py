"""The key file (`key.json` in a release's private folder), shared by every method whose authorization is a key.

    {"format": "uge-hf key", "version": 1, "method": "keyed" | "lock", "secret": "<64 hex digits>", ...method fields}

Whoever holds it is authorized. `verify` and `push` find key files by their `format` marker, whatever their name.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path

from .errors import UgeError
from .files import json_bytes

KEY_FILE = "key.json"
KEY_FORMAT = "uge-hf key"
KEY_BYTES = 32  # 256-bit keys, drawn with `secrets`


def new_secret() -> bytes:
    """A fresh 256-bit key from the OS's cryptographic source."""
    return secrets.token_bytes(KEY_BYTES)


def key_file_bytes(method: str, secret: bytes, **fields) -> bytes:
    """The key file of `method` for `secret` and the method's own fields (what its signal is made of)."""
    return json_bytes({"format": KEY_FORMAT, "version": 1, "method": method, "secret": secret.hex(), **fields})


def read_key_file(path: str | Path, method: str) -> tuple[bytes, dict]:
    """(secret, the file's fields) of a key file, or of the `key.json` in a private folder.

    Raises UgeError if there is none, it is not a uge-hf key file, or it is another method's key (a file without
    a `method` field predates the lock method and is a keyed key).
    """
    path = Path(path).expanduser()  # "~/key.json" from Python, as a shell would expand it
    if path.is_dir():
        path = path / KEY_FILE
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or data.get("format") != KEY_FORMAT:
            raise ValueError("not a uge-hf key file")
        secret = bytes.fromhex(data["secret"])
        if len(secret) != KEY_BYTES:
            raise ValueError(f"its secret is {len(secret)} bytes, not {KEY_BYTES}")
    except FileNotFoundError:
        raise UgeError(f"no key file at {path}") from None
    except OSError as e:  # a folder named key.json, no permission to read it, ...: one line, not a traceback
        raise UgeError(f"cannot read the key file {path}: {e.strerror or e}") from None
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as e:
        raise UgeError(f"{path} is not a uge-hf key file ({e})") from None
    found = data.get("method", "keyed")
    if found != method:
        raise UgeError(f"{path} is a key of the {found} method; this needs a {method} key")
    return secret, data
