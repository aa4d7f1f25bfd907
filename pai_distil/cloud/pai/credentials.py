"""AccessKeys from the standard Alibaba Cloud credential chain, for every SDK client here.

alibabacloud-credentials resolves them: environment variables (ALIBABA_CLOUD_ACCESS_KEY_ID,
ALIBABA_CLOUD_ACCESS_KEY_SECRET, ALIBABA_CLOUD_SECURITY_TOKEN), OIDC, the profile files
(~/.aliyun/config.json, ~/.alibabacloud/credentials.ini), the ECS RAM role. The tea-openapi
clients take the chain's client as it is (it refreshes STS tokens); oss2 gets it through a
credentials provider. No secret is ever returned to the rest of pai-distil, printed or stored.
"""

from __future__ import annotations

from functools import lru_cache

from pai_distil.core.errors import UserError

NO_CREDENTIALS = ("no Alibaba Cloud credentials found: set ALIBABA_CLOUD_ACCESS_KEY_ID and "
                  "ALIBABA_CLOUD_ACCESS_KEY_SECRET, or configure a profile (~/.alibabacloud/credentials.ini)")


@lru_cache(maxsize=1)
def chain():
    """The credential client of the default chain; fails with one line when nothing is configured."""
    import logging

    from alibabacloud_credentials.client import Client

    # the library logs each failed provider with a traceback on stderr; the one line below says it all
    logging.getLogger("credentials").disabled = True
    try:
        client = Client(_from_environment())
        client.get_credential()
    except Exception as e:  # noqa: BLE001 - the chain raises several types; all mean "not configured"
        raise UserError(f"{NO_CREDENTIALS} ({type(e).__name__})") from None
    return client


def _from_environment():
    """The environment's AccessKey (or STS token) as read now, else None for the library's default chain.

    The library reads these variables once, when it is imported; a program that sets them later
    (a notebook, a test) would otherwise not be heard.
    """
    import os

    from alibabacloud_credentials.models import Config

    ak, secret = os.environ.get("ALIBABA_CLOUD_ACCESS_KEY_ID"), os.environ.get("ALIBABA_CLOUD_ACCESS_KEY_SECRET")
    if not ak or not secret:
        return None
    token = os.environ.get("ALIBABA_CLOUD_SECURITY_TOKEN")
    if token:
        return Config(type="sts", access_key_id=ak, access_key_secret=secret, security_token=token)
    return Config(type="access_key", access_key_id=ak, access_key_secret=secret)


class OssProvider:
    """oss2's CredentialsProvider interface over the chain (STS tokens included)."""

    def __init__(self, client):
        self._client = client

    def get_credentials(self):
        from oss2.credentials import Credentials

        c = self._client.get_credential()
        return Credentials(c.access_key_id, c.access_key_secret, c.security_token or None)

    def __repr__(self) -> str:
        return "OssProvider(<credential chain>)"


def access_key_id() -> str:
    """The id (not the secret) in use, for messages that say which key was refused."""
    return chain().get_credential().access_key_id or ""
