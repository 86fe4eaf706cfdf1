"""Shared command-line options for the tools that talk to S3 (build_index, upload)."""

from __future__ import annotations

import argparse
from typing import Any

from ..storage.retry import RetryPolicy
from .files import resolve_credentials

__all__ = ["add_s3_arguments", "s3_options_from_args"]


def add_s3_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("S3 options (for s3:// sources and targets)")
    group.add_argument("--s3-credential-file", metavar="JSON",
                       help="credential JSON (access_key/secret or aws_* keys); otherwise the environment, then ~/.aws")
    group.add_argument("--endpoint-url", help="S3-compatible endpoint, e.g. http://127.0.0.1:9000 for MinIO")
    group.add_argument("--region", dest="region_name", help="region name")
    group.add_argument("--addressing-style", choices=["path", "virtual", "auto"], help="S3 addressing style")
    group.add_argument("--max-attempts", type=int, default=5, help="attempts per request, retries included (default 5)")


def s3_options_from_args(args: argparse.Namespace, max_pool_connections: int = 64) -> dict[str, Any]:
    """Keyword arguments for S3Store; credentials resolved as documented (file, environment, ~/.aws)."""
    creds = resolve_credentials(args.s3_credential_file)
    options: dict[str, Any] = dict(creds.client_options(), max_pool_connections=max_pool_connections,
                                   retry=RetryPolicy(max_attempts=args.max_attempts))
    endpoint = args.endpoint_url or creds.endpoint_url
    region = args.region_name or creds.region_name
    if endpoint:
        options["endpoint_url"] = endpoint
    if region:
        options["region_name"] = region
    if args.addressing_style:
        options["addressing_style"] = args.addressing_style
    return options
