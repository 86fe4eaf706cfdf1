"""The seed's JSON files: index, train/val classes, S3 credentials. Strict parsing, clear errors.

Every error names the file and what is wrong with it, and is raised when the dataset is built,
not in the middle of an epoch. Credential values never appear in an error, a log line or a repr.
"""

from __future__ import annotations

import configparser
import json
import logging
import os
import posixpath
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from .._atomic import atomic_open
from ..errors import ConfigError, DataFormatError

__all__ = [
    "S3Credentials",
    "TrainClasses",
    "ValClasses",
    "parse_index",
    "parse_classes",
    "read_json",
    "load_credential_file",
    "resolve_credentials",
    "compute_labels",
    "write_json_atomic",
    "DOWNLOAD_URL_KEYS",
]

log = logging.getLogger(__name__)

DOWNLOAD_URL_KEYS = (
    "train_index_file_download_url", "val_index_file_download_url", "test_index_file_download_url",
    "train_classes_file_download_url", "val_classes_file_download_url",
)
_CRED_KEYS = {"access_key", "secret", "aws_access_key_id", "aws_secret_access_key", "aws_session_token",
              "bucket_name", "endpoint_url", "region_name", *DOWNLOAD_URL_KEYS}


# ---------------------------------------------------------------------------------------- JSON
def _parse_json_text(text: str | bytes, source: str, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataFormatError(f"{what} file {source}: malformed JSON at line {exc.lineno} column {exc.colno}: "
                              f"{exc.msg}") from None
    except UnicodeDecodeError as exc:
        raise DataFormatError(f"{what} file {source}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except RecursionError:
        raise DataFormatError(f"{what} file {source}: JSON nested too deeply") from None
    except ValueError as exc:  # e.g. an integer beyond Python's digit limit
        raise DataFormatError(f"{what} file {source}: malformed JSON ({str(exc)[:120]})") from None


def read_json(location: str | os.PathLike, what: str, s3_options: Mapping[str, Any] | None = None) -> Any:
    """Parse a local JSON file, or download one named by an ``s3://bucket/key`` URL first.

    ``what`` ("index", "classes", "credential") goes into every error message.
    """
    loc = os.fspath(location)
    if loc.startswith("s3://"):
        from ..storage.s3 import S3Store, parse_s3_url

        bucket, key = parse_s3_url(loc)
        store = S3Store(bucket, **dict(s3_options or {}))
        try:
            data = store.get(key)
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"{what} file {loc} does not exist ({exc})") from None
        finally:
            store.close()
        return _parse_json_text(data, loc, what)
    path = Path(loc).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{what} file {path} does not exist")
    if path.is_dir():
        raise DataFormatError(f"{what} file {path} is a directory, expected a JSON file")
    return _parse_json_text(path.read_bytes(), str(path), what)


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int | None = None) -> None:
    """Write JSON via a temp file in the same directory and ``os.replace``: readers never see half a file."""
    with atomic_open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=indent)
        f.write("\n")


# --------------------------------------------------------------------------------------- index
def _type_name(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", int: "an integer", float: "a number",
            bool: "a boolean", type(None): "null"}.get(type(value), type(value).__name__)


def parse_index(data: Any, source: str) -> list[str]:
    """An index is a non-empty JSON list of non-empty strings (relative keys or paths)."""
    if not isinstance(data, list):
        raise DataFormatError(f"index file {source}: expected a JSON list of keys/paths, got {_type_name(data)}")
    if not data:
        raise DataFormatError(f"index file {source}: the index is empty (no keys/paths)")
    for i, entry in enumerate(data):
        if not isinstance(entry, str) or not entry.strip():
            raise DataFormatError(f"index file {source}: entry {i} must be a non-empty string, "
                                  f"got {_type_name(entry)} {entry!r:.60}")
    return data


# ------------------------------------------------------------------------------------- classes
@dataclass(frozen=True)
class TrainClasses:
    """``{wnid: {"id": int, "name": str}}``: the label of ``.../<wnid>_<n>.JPEG`` is ``classes[wnid]["id"]``."""

    ids: dict[str, int]
    names: dict[str, str]
    source: str


@dataclass(frozen=True)
class ValClasses:
    """``{"<position in index>": class_id}``."""

    by_position: dict[int, int]
    source: str


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_classes(data: Any, source: str) -> TrainClasses | ValClasses:
    """Accept either seed format; which one is decided by the shape of the values."""
    if not isinstance(data, dict):
        raise DataFormatError(f"classes file {source}: expected a JSON object, got {_type_name(data)}")
    if not data:
        raise DataFormatError(f"classes file {source}: no classes (empty object)")
    first_value = next(iter(data.values()))
    if isinstance(first_value, dict):
        ids: dict[str, int] = {}
        names: dict[str, str] = {}
        seen: dict[int, str] = {}
        for wnid, spec in data.items():
            if not isinstance(spec, dict):
                raise DataFormatError(f"classes file {source}: entry {wnid!r} must be an object "
                                      f'{{"id": int, "name": str}}, got {_type_name(spec)}')
            if "id" not in spec:
                raise DataFormatError(f'classes file {source}: entry {wnid!r} has no "id"')
            cid = spec["id"]
            if not _is_int(cid) or cid < 0:
                raise DataFormatError(f'classes file {source}: entry {wnid!r}: "id" must be an integer >= 0, '
                                      f"got {cid!r}")
            name = spec.get("name", wnid)
            if not isinstance(name, str):
                raise DataFormatError(f'classes file {source}: entry {wnid!r}: "name" must be a string, '
                                      f"got {_type_name(name)}")
            if cid in seen:
                raise DataFormatError(f"classes file {source}: id {cid} is used by both {seen[cid]!r} and {wnid!r}")
            seen[cid] = wnid
            ids[wnid] = cid
            names[wnid] = name
        return TrainClasses(ids, names, source)
    if _is_int(first_value):
        by_position: dict[int, int] = {}
        for pos, cid in data.items():
            if not (isinstance(pos, str) and pos.isdigit() and pos.isascii()):
                raise DataFormatError(f"classes file {source}: validation key {pos!r} must be a position in the "
                                      f'index ("0", "1", ...)')
            if not _is_int(cid) or cid < 0:
                raise DataFormatError(f"classes file {source}: position {pos}: class id must be an integer >= 0, "
                                      f"got {cid!r}")
            by_position[int(pos)] = cid
        return ValClasses(by_position, source)
    raise DataFormatError(
        f'classes file {source}: unrecognised shape. Expected {{wnid: {{"id": int, "name": str}}}} (train) or '
        f'{{"<position>": int}} (val); the first value is {_type_name(first_value)}')


def _train_label(entry: str, classes: TrainClasses) -> int | None:
    # The seed's rule: the filename prefix before "_" (n01440764_10026.JPEG -> n01440764).
    # A plain ImageFolder layout (<class>/<file>) is accepted as a fallback.
    name = posixpath.basename(entry.replace("\\", "/"))
    prefix = name.split("_", 1)[0] if "_" in name else None
    if prefix is not None and prefix in classes.ids:
        return classes.ids[prefix]
    parent = posixpath.basename(posixpath.dirname(entry.replace("\\", "/")))
    return classes.ids.get(parent)


def compute_labels(index: Sequence[str], classes: TrainClasses | ValClasses, index_source: str) -> list[int]:
    """One int label per index entry; every entry must have one."""
    if isinstance(classes, TrainClasses):
        labels: list[int] = []
        bad: list[tuple[int, str]] = []
        for i, entry in enumerate(index):
            label = _train_label(entry, classes)
            if label is None:
                bad.append((i, entry))
                labels.append(-1)
            else:
                labels.append(label)
        if bad:
            i, entry = bad[0]
            name = posixpath.basename(entry)
            wnid = name.split("_", 1)[0] if "_" in name else posixpath.basename(posixpath.dirname(entry))
            raise DataFormatError(f"index file {index_source}: {len(bad)} entr{'y' if len(bad) == 1 else 'ies'} "
                                  f"with a class not in classes file {classes.source}; first: entry {i} "
                                  f"{entry!r} (class {wnid!r})")
        return labels
    missing = [i for i in range(len(index)) if i not in classes.by_position]
    if missing:
        raise DataFormatError(f"classes file {classes.source}: no class for {len(missing)} position(s) of index "
                              f"{index_source}; first: position {missing[0]} ({index[missing[0]]!r})")
    extra = [p for p in classes.by_position if p >= len(index)]
    if extra:
        raise DataFormatError(f"classes file {classes.source}: position {max(extra)} is beyond the end of index "
                              f"{index_source} ({len(index)} entries): do the two files belong together?")
    return [classes.by_position[i] for i in range(len(index))]


# --------------------------------------------------------------------------------- credentials
@dataclass(frozen=True)
class S3Credentials:
    """Where the S3 keys and the optional file locations come from.

    ``source`` says which of (explicit arguments, credential file, environment, ~/.aws) won.
    The secret is excluded from ``repr`` and from :meth:`describe`.
    """

    aws_access_key_id: str | None = None
    aws_secret_access_key: str | None = field(default=None, repr=False)
    aws_session_token: str | None = field(default=None, repr=False)
    bucket_name: str | None = None
    endpoint_url: str | None = None
    region_name: str | None = None
    download_urls: dict[str, str] = field(default_factory=dict)
    source: str = "default credential chain"
    credential_file: str | None = None  # set when the keys come from this seed credential file

    def __repr__(self) -> str:
        from ..storage.s3 import mask_access_key

        return (f"S3Credentials(access_key={mask_access_key(self.aws_access_key_id)}, source={self.source!r}, "
                f"bucket_name={self.bucket_name!r})")

    __str__ = __repr__

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments for :class:`~concurrent_dataloader.storage.S3Store` saying where the keys are.

        Keys given explicitly are passed as they are (and so travel in the store's pickle). Keys
        from the credential file are passed as the file's path, and keys from the environment or
        ``~/.aws`` as nothing at all: each process resolves them itself (botocore's chain, which
        has the same order as steps 3 to 5 of :func:`resolve_credentials`), and no secret travels.
        """
        out: dict[str, Any] = {}
        if self.credential_file is not None:
            out["credential_file"] = self.credential_file
        elif self.aws_access_key_id is not None and self.source == "explicit arguments":
            out["aws_access_key_id"] = self.aws_access_key_id
            out["aws_secret_access_key"] = self.aws_secret_access_key
            if self.aws_session_token:
                out["aws_session_token"] = self.aws_session_token
        return out


def load_credential_file(path: str | os.PathLike) -> S3Credentials:
    """Both seed forms: ``{access_key, secret}`` and ``{aws_access_key_id, aws_secret_access_key, bucket_name,
    *_download_url}``. Optional ``endpoint_url``/``region_name`` for S3-compatible stores."""
    data = read_json(path, "credential")
    source = f"credential file {os.fspath(path)}"
    if not isinstance(data, dict):
        raise DataFormatError(f"{source}: expected a JSON object, got {_type_name(data)}")
    for key, value in data.items():
        if key not in _CRED_KEYS:
            warnings.warn(f"{source}: ignoring unknown key {key!r}", UserWarning, stacklevel=3)
        elif not isinstance(value, str):
            # NOTE: only the key and the type are reported, never the value.
            raise DataFormatError(f"{source}: {key!r} must be a string, got {_type_name(value)}")
    short = "access_key" in data or "secret" in data
    long = "aws_access_key_id" in data or "aws_secret_access_key" in data
    if short and long:
        raise DataFormatError(f"{source}: use either access_key/secret or aws_access_key_id/aws_secret_access_key, "
                              "not both")
    key_name, secret_name = ("access_key", "secret") if short else ("aws_access_key_id", "aws_secret_access_key")
    key_id, secret = data.get(key_name), data.get(secret_name)
    if (key_id is None) != (secret is None):
        present, absent = (key_name, secret_name) if key_id is not None else (secret_name, key_name)
        raise DataFormatError(f"{source}: has {present!r} but no {absent!r}")
    urls = {k: data[k] for k in DOWNLOAD_URL_KEYS if k in data}
    for k, url in urls.items():
        if not url.startswith("s3://"):
            raise DataFormatError(f"{source}: {k!r} must be an s3:// URL, got {url!r}")
    return S3Credentials(aws_access_key_id=key_id, aws_secret_access_key=secret,
                         aws_session_token=data.get("aws_session_token"), bucket_name=data.get("bucket_name"),
                         endpoint_url=data.get("endpoint_url"), region_name=data.get("region_name"),
                         download_urls=urls, source=source,
                         credential_file=_portable_location(path) if key_id is not None else None)


def _portable_location(path: str | os.PathLike) -> str:
    """An absolute path (a worker may run in another directory), or the s3:// URL as given."""
    loc = os.fspath(path)
    return loc if loc.startswith("s3://") else os.path.abspath(os.path.expanduser(loc))


def _from_shared_file(env: Mapping[str, str]) -> S3Credentials | None:
    path = Path(env.get("AWS_SHARED_CREDENTIALS_FILE") or os.path.join(os.path.expanduser("~"), ".aws",
                                                                           "credentials")).expanduser()
    profile = env.get("AWS_PROFILE") or "default"
    if not path.is_file():
        return None
    parser = configparser.RawConfigParser()
    try:
        parser.read(path, encoding="utf-8")
    except configparser.Error as exc:
        raise DataFormatError(f"AWS shared credentials file {path}: cannot parse ({type(exc).__name__})") from None
    if not parser.has_section(profile):
        return None
    section = parser[profile]
    key_id, secret = section.get("aws_access_key_id"), section.get("aws_secret_access_key")
    if not key_id or not secret:
        return None
    return S3Credentials(aws_access_key_id=key_id, aws_secret_access_key=secret,
                         aws_session_token=section.get("aws_session_token"),
                         source=f"{path} [{profile}]")


def resolve_credentials(s3_credential_file: str | os.PathLike | None = None, *,
                        aws_access_key_id: str | None = None, aws_secret_access_key: str | None = None,
                        env: Mapping[str, str] | None = None) -> S3Credentials:
    """Pick the S3 keys; the first source that has both the key id and the secret wins:

    1. explicit ``aws_access_key_id``/``aws_secret_access_key`` arguments;
    2. the credential file (``s3_credential_file``), if it contains keys;
    3. the environment: ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` (and ``AWS_SESSION_TOKEN``);
    4. ``~/.aws/credentials`` (or ``$AWS_SHARED_CREDENTIALS_FILE``), profile ``$AWS_PROFILE`` or ``default``;
    5. otherwise botocore's default chain (config file, container/instance roles...).

    ``bucket_name``, ``endpoint_url``, ``region_name`` and the download URLs come from the
    credential file whichever source supplies the keys.
    """
    env = os.environ if env is None else env
    if (aws_access_key_id is None) != (aws_secret_access_key is None):
        raise ConfigError("pass both aws_access_key_id and aws_secret_access_key, or neither")
    from_file = load_credential_file(s3_credential_file) if s3_credential_file is not None else S3Credentials()
    extras = dict(bucket_name=from_file.bucket_name, endpoint_url=from_file.endpoint_url,
                  region_name=from_file.region_name, download_urls=from_file.download_urls)
    if aws_access_key_id is not None:
        chosen = S3Credentials(aws_access_key_id, aws_secret_access_key, source="explicit arguments", **extras)
    elif from_file.aws_access_key_id is not None:
        chosen = from_file
    elif env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        chosen = S3Credentials(env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"],
                               env.get("AWS_SESSION_TOKEN"), source="environment", **extras)
    else:
        shared = _from_shared_file(env)
        if shared is not None:
            chosen = S3Credentials(shared.aws_access_key_id, shared.aws_secret_access_key,
                                   shared.aws_session_token, source=shared.source, **extras)
        else:
            chosen = S3Credentials(source="default credential chain", **extras)
    log.debug("S3 credentials from %s", chosen.source)  # the source only, never a value
    return chosen
