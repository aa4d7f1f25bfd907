"""AccessKeys from the standard Alibaba Cloud credential chain, for every SDK client here.

alibabacloud-credentials' providers resolve them (see RefreshingChain): environment variables
(ALIBABA_CLOUD_ACCESS_KEY_ID, ALIBABA_CLOUD_ACCESS_KEY_SECRET, ALIBABA_CLOUD_SECURITY_TOKEN), OIDC,
the profile files (~/.aliyun/config.json, ~/.alibabacloud/credentials.ini), the ECS RAM role, a
credentials URI. The tea-openapi clients take the chain's client as it is and ask it for keys at
every call, so refreshed STS tokens are used as they come; oss2 gets it through a credentials
provider. No secret is ever returned to the rest of pai-distil, printed or stored.
"""

from __future__ import annotations

import os
from functools import lru_cache

from pai_distil.core.errors import UserError

NO_CREDENTIALS = ("no Alibaba Cloud credentials found: set ALIBABA_CLOUD_ACCESS_KEY_ID and "
                  "ALIBABA_CLOUD_ACCESS_KEY_SECRET, or configure a profile (~/.alibabacloud/credentials.ini)")


REWALK_S = 60.0  # how long one source of the chain is reused before the chain is walked again


@lru_cache(maxsize=1)
def chain():
    """The credential client of the refreshing chain; fails with one line when nothing is configured."""
    import logging

    from alibabacloud_credentials.client import Client

    # the library logs each failed provider with a traceback on stderr; the one line below says it all
    logging.getLogger("credentials").disabled = True
    try:
        client = Client(provider=RefreshingChain())
        client.get_credential()
    except Exception as e:  # noqa: BLE001 - the chain raises several types; all mean "not configured"
        raise UserError(f"{NO_CREDENTIALS} ({type(e).__name__})") from None
    return client


class RefreshingChain:
    """alibabacloud_credentials' default chain, in the order a long-lived supervisor needs.

    1. an AccessKey pair in the environment, read now (not when the library was imported);
    2. the sources that refresh themselves: OIDC, the CLI profile, the profile file, the ECS RAM role,
       ALIBABA_CLOUD_CREDENTIALS_URI;
    3. only then an STS token from the environment: it cannot be refreshed, so it is used only when
       nothing that refreshes is configured.
    The source that worked is reused for REWALK_S seconds, then the chain is walked again, so a profile
    written or refreshed while a run is followed is picked up. Implements ICredentialsProvider.
    """

    def __init__(self):
        from alibabacloud_credentials.provider import (CLIProfileCredentialsProvider, EcsRamRoleCredentialsProvider,
                                                       OIDCRoleArnCredentialsProvider, ProfileCredentialsProvider,
                                                       URLCredentialsProvider)
        from alibabacloud_credentials.utils import auth_util as au

        self.providers = [_environment(with_token=False)]
        if au.enable_oidc_credential:
            self.providers.append(OIDCRoleArnCredentialsProvider())
        self.providers += [CLIProfileCredentialsProvider(), ProfileCredentialsProvider()]
        if os.environ.get("ALIBABA_CLOUD_ECS_METADATA_DISABLED", "false").lower() != "true":
            self.providers.append(EcsRamRoleCredentialsProvider())
        if os.environ.get("ALIBABA_CLOUD_CREDENTIALS_URI"):
            self.providers.append(URLCredentialsProvider())
        self.providers.append(_environment(with_token=True))
        self.last, self.last_at = None, 0.0

    def get_credentials(self):
        import time

        from alibabacloud_credentials.exceptions import CredentialException

        if self.last is not None and time.monotonic() - self.last_at < REWALK_S:
            return self.last.get_credentials()
        errors = []
        for provider in self.providers:
            try:
                credentials = provider.get_credentials()
            except Exception as e:  # noqa: BLE001 - each source fails in its own way; the next is tried
                errors.append(f"{type(provider).__name__}: {e}")
                continue
            if credentials is not None:
                self.last, self.last_at = provider, time.monotonic()
                return credentials
        raise CredentialException(f"no source of the chain gave credentials: {errors}")

    async def get_credentials_async(self):
        return self.get_credentials()

    def get_provider_name(self) -> str:
        return "pai-distil-refreshing-chain"


class _environment:
    """The environment's AccessKey pair (`with_token=False`) or STS token (`with_token=True`), read at each call."""

    def __init__(self, with_token: bool):
        self.with_token = with_token

    def get_credentials(self):
        from alibabacloud_credentials.exceptions import CredentialException
        from alibabacloud_credentials.provider.refreshable import Credentials

        ak, secret = os.environ.get("ALIBABA_CLOUD_ACCESS_KEY_ID"), os.environ.get("ALIBABA_CLOUD_ACCESS_KEY_SECRET")
        token = os.environ.get("ALIBABA_CLOUD_SECURITY_TOKEN") or None
        if not ak or not secret or bool(token) != self.with_token:
            raise CredentialException("not set in the environment")
        return Credentials(access_key_id=ak, access_key_secret=secret, security_token=token,
                           provider_name="sts-env" if token else "env")

    async def get_credentials_async(self):
        return self.get_credentials()

    def get_provider_name(self) -> str:
        return "sts-env" if self.with_token else "env"


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
