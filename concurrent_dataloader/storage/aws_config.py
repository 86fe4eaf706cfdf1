"""Endpoint, region, TLS and credential settings for the S3 stores, resolved by botocore itself.

Why botocore: a real deployment configures S3 in many places (``AWS_ENDPOINT_URL_S3``,
``AWS_ENDPOINT_URL``, ``endpoint_url`` in a profile or in its ``services`` section,
``AWS_REGION``, ``AWS_CA_BUNDLE``, ``credential_process``, SSO, instance roles...). Re-implementing
those rules would drift from the SDKs, so the lean client asks botocore what it would do, once per
process and bucket, and keeps only the per-GET work (signing, one HTTP request) for itself.

- :func:`resolve_target` builds a botocore client (never used on the network) and lets it
  prepare one signed HeadBucket; a ``before-send`` hook captures the URL and the signing region
  and answers it locally. That URL *is* botocore's choice of endpoint and addressing style.
- :class:`CredentialSource` says where keys come from. It is what travels to worker processes:
  for the environment, a profile or the seed's credential file only the *source* (a profile name,
  a file path) is pickled and each process resolves the keys itself; keys passed explicitly in code
  travel as they are (see docs/datasets.md, "Credentials and worker processes").
- :meth:`CredentialSource.provider` gives the process's :class:`CredentialProvider`, which keeps
  botocore's refreshable credentials object and hands out its *current* keys on each request.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

__all__ = ["CredentialSource", "CredentialProvider", "S3Target", "resolve_target", "resolve_ca_bundle",
           "botocore_session"]

# Placeholder keys for the probe client: it signs a request that is answered locally, so these
# never leave the process; with them botocore reports the signing region it would use.
_PROBE_KEYS = {"aws_access_key_id": "probe", "aws_secret_access_key": "probe"}


# botocore's data loader (the parsed service models and endpoint rules: static files) is shared by
# the sessions made here, so a store costs milliseconds to configure after the first one. Sessions
# themselves are never shared: each reads the environment and config files afresh.
_LOADER: list[Any] = []


def botocore_session(profile_name: str | None = None) -> Any:
    """A fresh botocore session (``profile_name`` overrides ``AWS_PROFILE``)."""
    import botocore.session

    session = botocore.session.Session(profile=profile_name)
    if _LOADER:
        session.register_component("data_loader", _LOADER[0])
    else:
        _LOADER.append(session.get_component("data_loader"))
    return session


@dataclass(frozen=True)
class S3Target:
    """Where the requests for one bucket go: ``scheme://host[:port]`` plus ``path_prefix``, which is
    ``/bucket`` for path-style addressing and ``""`` for virtual-hosted style (the bucket is in the
    host name), after any base path of the endpoint. ``region`` is the signing region."""

    tls: bool
    host: str
    port: int
    path_prefix: str
    region: str
    endpoint_url: str  # the configured endpoint (before the bucket is added), for messages

    @property
    def host_header(self) -> str:
        return self.host if self.port == (443 if self.tls else 80) else f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host_header}{self.path_prefix}"


class _EmptyBody:
    def stream(self, **_: Any):
        return iter(())


def resolve_target(bucket: str, *, endpoint_url: str | None = None, region_name: str | None = None,
                   addressing_style: str | None = None, profile_name: str | None = None,
                   session: Any = None) -> S3Target:
    """botocore's endpoint, addressing style and signing region for ``bucket``.

    Sources, as botocore reads them (first wins): the ``endpoint_url`` argument,
    ``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL``, the profile's ``services`` section and
    ``endpoint_url`` in the profile (unless ``AWS_IGNORE_CONFIGURED_ENDPOINT_URLS``), else AWS's own
    endpoint for the region. Region: the argument, ``AWS_REGION``/``AWS_DEFAULT_REGION``, the
    profile's ``region``, else ``us-east-1`` (the global endpoint). ``addressing_style`` ``"auto"``
    (or ``None``) is virtual-hosted for DNS-compatible buckets at AWS and path-style elsewhere.
    """
    from botocore.awsrequest import AWSResponse
    from botocore.config import Config

    session = session if session is not None else botocore_session(profile_name)
    config = Config(retries={"total_max_attempts": 1},
                    s3={"addressing_style": addressing_style} if addressing_style else None)
    client = session.create_client("s3", endpoint_url=endpoint_url, region_name=region_name, config=config,
                                   **_PROBE_KEYS)
    seen: dict[str, Any] = {}

    def capture(request: Any, **_: Any) -> Any:
        seen["url"] = request.url
        seen["region"] = (request.context.get("signing") or {}).get("region")
        return AWSResponse(request.url, 200, {}, _EmptyBody())

    client.meta.events.register("before-send.s3.HeadBucket", capture)
    try:
        client.head_bucket(Bucket=bucket)
    finally:
        client.close()
    parts = urlsplit(seen["url"])
    tls = parts.scheme == "https"
    path = parts.path.rstrip("/")
    return S3Target(tls=tls, host=parts.hostname or "", port=parts.port or (443 if tls else 80), path_prefix=path,
                    region=seen.get("region") or client.meta.region_name or "us-east-1",
                    endpoint_url=client.meta.endpoint_url)


def resolve_ca_bundle(verify: bool | str | None, session: Any = None, profile_name: str | None = None) -> bool | str:
    """botocore's rule for ``verify``: ``False`` turns checking off, a path is a CA bundle, and
    ``None`` means ``AWS_CA_BUNDLE`` / the profile's ``ca_bundle``, else botocore's default bundle."""
    if verify is False:
        return False
    if isinstance(verify, str):
        return verify
    session = session if session is not None else botocore_session(profile_name)
    bundle = session.get_config_variable("ca_bundle")
    if bundle:
        return bundle
    from botocore.httpsession import get_cert_path

    return get_cert_path(True)


class _Static:
    """Keys that do not change (given in code, or read from the seed's credential file)."""

    __slots__ = ("access_key", "secret_key", "token")

    def __init__(self, access_key: str, secret_key: str, token: str | None) -> None:
        self.access_key = access_key
        self.secret_key = secret_key
        self.token = token

    def __repr__(self) -> str:  # NOTE: never the secret; the key id masked
        from .s3 import mask_access_key

        return f"<static credentials {mask_access_key(self.access_key)}>"

    def __reduce__(self):  # a snapshot is for signing in this process, never for a pickle
        raise TypeError("credential snapshots are not picklable; pickle the CredentialSource")


class CredentialProvider:
    """This process's keys for one :class:`CredentialSource`.

    :meth:`current` returns an object with ``access_key``, ``secret_key`` and ``token``: for keys
    from botocore's chain it is ``get_frozen_credentials()`` of botocore's (refreshable) credentials
    object, called per request. That is cheap: the object refreshes itself (e.g. runs
    ``credential_process`` again) only inside its advisory window before expiry.
    :meth:`refresh` resolves the keys anew (after the server said ``ExpiredToken``).
    """

    def __init__(self, source: "CredentialSource") -> None:
        self.source = source
        self._lock = threading.Lock()
        self._static: _Static | None = None
        self._creds: Any = None
        self._load()

    def _load(self) -> None:
        src = self.source
        if src.kind == "anonymous":
            return
        if src.kind == "explicit":
            self._static = _Static(src.access_key or "", src._secret or "", src._token)
            return
        if src.kind == "file":
            from ..datasets.files import load_credential_file

            loaded = load_credential_file(src.credential_file)  # type: ignore[arg-type]
            if loaded.aws_access_key_id is not None:
                self._static = _Static(loaded.aws_access_key_id, loaded.aws_secret_access_key or "",
                                       loaded.aws_session_token)
                return
        creds = botocore_session(src.profile_name).get_credentials()
        if creds is None:
            from .s3 import S3AccessDeniedError

            raise S3AccessDeniedError(f"no AWS credentials found ({src.describe()}): pass aws_access_key_id/"
                                      "aws_secret_access_key, set AWS_* variables or a profile, or use anonymous=True")
        self._creds = creds

    @property
    def refreshable(self) -> bool:
        return self._creds is not None

    def current(self) -> Any:
        """The keys to sign this request with (``None``: anonymous)."""
        if self._static is not None:
            return self._static
        creds = self._creds
        return creds.get_frozen_credentials() if creds is not None else None

    def refresh(self) -> bool:
        """Resolve the keys again; ``False`` when the source cannot give new ones (static keys)."""
        if self._creds is None:
            return False
        with self._lock:
            self._load()
        return True


class CredentialSource:
    """Where S3 keys come from; the picklable part of the credentials.

    ``kind`` is ``"explicit"`` (keys given in code: they are pickled with the store, so that a
    spawned worker can sign; see docs/datasets.md), ``"file"`` (the seed's JSON credential file:
    only its path is pickled; a file without keys falls back to the chain), ``"chain"``
    (botocore's default chain for ``profile_name``: environment, shared credentials and config
    files, ``credential_process``, SSO, container and instance roles; only the profile name is
    pickled) or ``"anonymous"`` (unsigned requests).
    """

    __slots__ = ("kind", "access_key", "_secret", "_token", "credential_file", "profile_name")

    def __init__(self, *, aws_access_key_id: str | None = None, aws_secret_access_key: str | None = None,
                 aws_session_token: str | None = None, credential_file: str | os.PathLike | None = None,
                 profile_name: str | None = None, anonymous: bool = False) -> None:
        from ..errors import ConfigError

        if (aws_access_key_id is None) != (aws_secret_access_key is None):
            raise ConfigError("give both aws_access_key_id and aws_secret_access_key, or neither "
                              "(to use the default credential chain)")
        self.access_key = aws_access_key_id
        self._secret = aws_secret_access_key
        self._token = aws_session_token
        self.credential_file = os.fspath(credential_file) if credential_file is not None else None
        self.profile_name = profile_name
        if anonymous:
            self.kind = "anonymous"
        elif aws_access_key_id is not None:
            self.kind = "explicit"
        elif credential_file is not None:
            self.kind = "file"
        else:
            self.kind = "chain"

    def __getstate__(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}

    def __setstate__(self, state: dict[str, Any]) -> None:
        for name, value in state.items():
            setattr(self, name, value)

    def provider(self) -> CredentialProvider:
        return CredentialProvider(self)

    def botocore_kwargs(self) -> dict[str, Any]:
        """Keys for ``create_client`` when this process must pass them (explicit keys, credential
        file); empty for the chain, which the client's session resolves (and refreshes) itself."""
        if self.kind == "chain" or self.kind == "anonymous":
            return {}
        static = CredentialProvider(self)._static
        if static is None:  # a credential file without keys: the chain
            return {}
        out = {"aws_access_key_id": static.access_key, "aws_secret_access_key": static.secret_key}
        if static.token:
            out["aws_session_token"] = static.token
        return out

    def access_key_id(self) -> str | None:
        """The key id for messages (callers mask it): explicit keys, or the credential file's."""
        if self.kind == "explicit":
            return self.access_key
        if self.kind == "file":
            try:
                return self.botocore_kwargs().get("aws_access_key_id")
            except Exception:  # an unreadable file: the message says where keys come from anyway
                return None
        return None

    def describe(self) -> str:
        """Where the keys come from, for messages (never a secret)."""
        if self.kind == "explicit":
            return "keys given in code"
        if self.kind == "file":
            return f"credential file {self.credential_file}"
        if self.kind == "anonymous":
            return "anonymous"
        return f"profile {self.profile_name!r}" if self.profile_name else "default credential chain"

    def __repr__(self) -> str:
        return f"CredentialSource({self.describe()})"
