"""Request signatures of Alibaba Cloud APIs, checked on the server side.

One module for every service of the emulator: OSS (signature V1 `OSS ak:sig` and V4
`OSS4-HMAC-SHA256`) and the POP APIs the tea-openapi clients call (DLC, DSW, EAS: the
`ACS3-HMAC-SHA256` signature those clients use by default, and the older ROA `acs ak:sig`).
Each check rebuilds the string the client signed from the request as received, so a wrong
secret, a tampered body or a mangled header all fail the same way. Functions take plain values
(method, decoded path, decoded query pairs, lower-cased headers, body), not a framework request,
so any router can call them. Secrets are only compared, never logged or returned.

As on the real services, a signature is not enough: the request's date must lie within 15
minutes of the server's clock, and a POP request's `x-acs-signature-nonce` is accepted once, so
a captured request cannot be replayed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from urllib.parse import quote

# oss2 keeps this list on the client side too: query keys that take part in a V1 signature.
OSS_SUBRESOURCES = frozenset(
    "acl uploadId uploads partNumber group link delete website location objectInfo objectMeta "
    "response-content-type response-content-language response-expires response-cache-control "
    "response-content-disposition response-content-encoding logging cors lifecycle restore qos "
    "referer stat bucketInfo append position security-token live comp status vod startTime endTime "
    "x-oss-process symlink callback callback-var tagging encryption versions versioning versionId "
    "policy requestPayment x-oss-traffic-limit qosInfo asyncFetch x-oss-request-payer sequential "
    "inventory inventoryId continuation-token worm wormId wormExtend replication replicationLocation "
    "replicationProgress transferAcceleration cname metaQuery resourceGroup style styleName "
    "x-oss-async-process regionList".split())
OSS_V4_DEFAULT_SIGNED = ("content-type", "content-md5")
OSS_MISMATCH = ("The request signature we calculated does not match the signature you provided. "
                "Check your key and signing method.")
POP_MISMATCH = "Specified signature does not match our calculation."
BODY_MISMATCH = "the body does not match x-acs-content-sha256"
SKEW_S = 15 * 60  # how far a request's date may be from the server's clock, either way


class AuthError(Exception):
    """Why a request is refused; each service renders it in its own error shape."""

    def __init__(self, code: str, message: str, access_key_id: str = "", string_to_sign: str = ""):
        super().__init__(message)
        self.code = code
        self.message = message
        self.access_key_id = access_key_id
        self.string_to_sign = string_to_sign


@dataclass(frozen=True)
class SignedRequest:
    """What a signature covers, as the server received it."""

    method: str
    path: str  # percent-decoded
    query: list[tuple[str, str]]  # percent-decoded, in order; a bare `?uploads` is ("uploads", "")
    headers: dict[str, str]  # lower-cased names
    body: bytes | None = b""  # None: not read yet; an ACS3 signature is then checked against x-acs-content-sha256


class Keys:
    """The AccessKey pairs the emulator accepts (given at start, never persisted)."""

    def __init__(self, pairs: dict[str, str]):
        self._pairs = dict(pairs)

    def secret(self, access_key_id: str) -> str:
        try:
            return self._pairs[access_key_id]
        except KeyError:
            raise AuthError("InvalidAccessKeyId", f"Specified access key is not found: {access_key_id}",
                            access_key_id) from None

    def __repr__(self) -> str:  # never show secrets, even in a debugger or a traceback
        return f"Keys({sorted(self._pairs)})"


class Nonces:
    """Signature nonces seen within the date window: a nonce is accepted once."""

    def __init__(self, window_s: float = SKEW_S):
        self.window_s = window_s
        self._seen: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def use(self, nonce: str, ak: str) -> None:
        now = time.time()
        with self._lock:
            if len(self._seen) > 10_000:  # forget nonces whose requests are stale anyway
                self._seen = {n: t for n, t in self._seen.items() if now - t < 2 * self.window_s}
            if (ak, nonce) in self._seen:
                raise AuthError("SignatureNonceUsed", "Specified signature nonce was used already.", ak)
            self._seen[(ak, nonce)] = now


def request_time(value: str) -> float | None:
    """Seconds since the epoch of a request date as the services send it: RFC 1123 (`Date`),
    ISO 8601 (`x-acs-date`) or the compact `20261201T230000Z` of `x-oss-date` in V4; None if unreadable."""
    for parse in (lambda v: datetime.strptime(v, "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc),
                  lambda v: datetime.strptime(v, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc),
                  parsedate_to_datetime):
        try:
            return parse(value.strip()).timestamp()
        except (TypeError, ValueError, IndexError):
            continue
    return None


def _check_time(value: str | None, ak: str, code: str, message: str) -> None:
    t = request_time(value) if value else None
    if t is None or abs(time.time() - t) > SKEW_S:
        raise AuthError(code, message, ak)


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def _verify_sha1(credential: str, to_sign: str, keys: Keys, mismatch: str) -> str:
    """`AK:base64(hmac-sha1(secret, string to sign))`, the form of OSS V1 and of ROA signatures."""
    ak, _, signature = credential.rpartition(":")
    secret = keys.secret(ak)
    expected = base64.b64encode(hmac.new(secret.encode(), to_sign.encode(), hashlib.sha1).digest()).decode()
    if not _same(expected, signature):
        raise AuthError("SignatureDoesNotMatch", mismatch, ak, to_sign)
    return ak


# --- OSS ---------------------------------------------------------------------------------------

def _oss_resource_v1(req: SignedRequest) -> str:
    """`/bucket/key` (the OSS router passes bucket requests as `/bucket/`) plus sub-resources."""
    subs = sorted((k, v) for k, v in req.query if k in OSS_SUBRESOURCES)
    return req.path + ("?" + "&".join(f"{k}={v}" if v else k for k, v in subs) if subs else "")


def oss_string_to_sign_v1(req: SignedRequest) -> str:
    h = req.headers
    oss_headers = "".join(f"{k}:{h[k]}\n" for k in sorted(k for k in h if k.startswith("x-oss-")))
    return "\n".join([req.method, h.get("content-md5", ""), h.get("content-type", ""),
                      h.get("x-oss-date") or h.get("date", ""), oss_headers + _oss_resource_v1(req)])


def _v4_encode(text: str, keep_slash: bool) -> str:
    return quote(text, safe="-_.~" + ("/" if keep_slash else ""))


def oss_v4_parts(req: SignedRequest, additional: list[str], scope: str) -> tuple[str, str]:
    """(canonical request, string to sign) of an OSS V4 signature."""
    h = req.headers
    signed = sorted(k for k in h if k.startswith("x-oss-") or k in OSS_V4_DEFAULT_SIGNED or k in additional)
    query = sorted((_v4_encode(k, False), _v4_encode(v, False)) for k, v in req.query)
    canonical = "\n".join([
        req.method, _v4_encode(req.path, True), "&".join(f"{k}={v}" if v else k for k, v in query),
        "".join(f"{k}:{h[k]}\n" for k in signed), ";".join(sorted(additional)),
        h.get("x-oss-content-sha256", "UNSIGNED-PAYLOAD")])
    to_sign = "\n".join(["OSS4-HMAC-SHA256", h.get("x-oss-date", ""), scope,
                         hashlib.sha256(canonical.encode()).hexdigest()])
    return canonical, to_sign


def _v4_signing_key(secret: str, scope: str) -> bytes:
    date, region, product, _ = scope.split("/")
    key = ("aliyun_v4" + secret).encode()
    for part in (date, region, product, "aliyun_v4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def _auth_fields(text: str) -> dict[str, str]:
    fields = {}
    for item in text.split(","):
        name, _, value = item.strip().partition("=")
        fields[name] = value
    return fields


def verify_oss(req: SignedRequest, keys: Keys) -> str:
    """Check an OSS request's signature (V1 or V4); returns the AccessKey id that signed it."""
    auth = req.headers.get("authorization", "")
    if auth.startswith("OSS4-HMAC-SHA256 "):
        fields = _auth_fields(auth[len("OSS4-HMAC-SHA256 "):])
        ak, _, scope = fields.get("Credential", "").partition("/")
        additional = [a for a in fields.get("AdditionalHeaders", "").split(";") if a]
        secret = keys.secret(ak)
        if scope.count("/") != 3:
            raise AuthError("InvalidArgument", f"malformed V4 credential scope {scope!r}", ak)
        _, to_sign = oss_v4_parts(req, additional, scope)
        expected = hmac.new(_v4_signing_key(secret, scope), to_sign.encode(), hashlib.sha256).hexdigest()
        if not _same(expected, fields.get("Signature", "")):
            raise AuthError("SignatureDoesNotMatch", OSS_MISMATCH, ak, to_sign)
    elif auth.startswith("OSS "):
        ak = _verify_sha1(auth[4:], oss_string_to_sign_v1(req), keys, OSS_MISMATCH)
    else:
        raise AuthError("AccessDenied", "AccessDenied: anonymous access is not allowed on this emulator; sign the request")
    _check_time(req.headers.get("x-oss-date") or req.headers.get("date"), ak, "RequestTimeTooSkewed",
                "The difference between the request time and the current time is too large.")
    return ak


# --- POP (tea-openapi: DLC, DSW, EAS) -------------------------------------------------------------

def acs3_canonical_request(req: SignedRequest, signed_headers: list[str], payload_hash: str) -> str:
    query = sorted((k, v) for k, v in req.query)
    canonical_query = "&".join(f"{k}={quote(v, safe='~')}" for k, v in query)
    headers = "".join(f"{k}:{req.headers.get(k, '').strip()}\n" for k in signed_headers)
    return "\n".join([req.method, req.path or "/", canonical_query, headers, ";".join(signed_headers), payload_hash])


def roa_string_to_sign(req: SignedRequest) -> str:
    h = req.headers
    acs = "".join(f"{k}:{h[k]}\n" for k in sorted(k for k in h if k.startswith("x-acs-")))
    query = sorted(req.query)
    resource = req.path + ("?" + "&".join(f"{k}={v}" if v else k for k, v in query) if query else "")
    return "\n".join([req.method, h.get("accept", ""), h.get("content-md5", ""), h.get("content-type", ""),
                      h.get("date", ""), acs + resource])


def verify_pop(req: SignedRequest, keys: Keys, nonces: Nonces | None = None) -> str:
    """Check a tea-openapi request's signature (ACS3-HMAC-SHA256 or ROA HMAC-SHA1), its date and,
    with `nonces`, that its signature nonce is new; returns the AccessKey id."""
    ak = _verify_pop_signature(req, keys)
    _check_time(req.headers.get("x-acs-date") or req.headers.get("date"), ak, "InvalidTimeStamp.Expired",
                "Specified time stamp or date value is expired.")
    if nonces is not None:
        nonce = req.headers.get("x-acs-signature-nonce")
        if not nonce:
            raise AuthError("MissingSignatureNonce", "SignatureNonce is mandatory for this action.", ak)
        nonces.use(nonce, ak)
    return ak


def _verify_pop_signature(req: SignedRequest, keys: Keys) -> str:
    auth = req.headers.get("authorization", "")
    if auth.startswith("ACS3-HMAC-SHA256 "):
        fields = _auth_fields(auth[len("ACS3-HMAC-SHA256 "):])
        ak = fields.get("Credential", "")
        secret = keys.secret(ak)
        claimed = req.headers.get("x-acs-content-sha256")
        payload = claimed if req.body is None and claimed else hashlib.sha256(req.body or b"").hexdigest()
        if claimed is not None and claimed != payload:
            raise AuthError("SignatureDoesNotMatch", BODY_MISMATCH, ak)
        signed = [s for s in fields.get("SignedHeaders", "").split(";") if s]
        canonical = acs3_canonical_request(req, signed, payload)
        to_sign = "ACS3-HMAC-SHA256\n" + hashlib.sha256(canonical.encode()).hexdigest()
        expected = hmac.new(secret.encode(), to_sign.encode(), hashlib.sha256).hexdigest()
        if not _same(expected, fields.get("Signature", "")):
            raise AuthError("SignatureDoesNotMatch", POP_MISMATCH, ak, to_sign)
        return ak
    if auth.startswith("acs "):
        return _verify_sha1(auth[4:], roa_string_to_sign(req), keys, POP_MISMATCH)
    raise AuthError("MissingAuthorization", "the request carries no Authorization header; sign it with an AccessKey")
