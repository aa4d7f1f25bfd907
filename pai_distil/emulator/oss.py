"""The OSS REST API, path-style (`http://127.0.0.1:PORT/<bucket>/<key>`), as oss2 and the OSS v2 SDK speak it.

Buckets; put/get (ranges)/head/delete/copy object; batch delete; multipart (initiate, upload
part, list parts, complete, abort); ListObjects v1 and v2 with prefixes, delimiters and
continuation; ETag, Content-MD5 and x-oss-hash-crc64ecma on every write; signature V1 and V4.
Errors are OSS's XML error documents with its codes and status codes.
"""

from __future__ import annotations

import base64
import re
import time
import uuid
from email.utils import formatdate
from urllib.parse import quote
from xml.etree import ElementTree
from xml.sax.saxutils import escape

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse, Response

from .auth import AuthError, SignedRequest, verify_oss
from .objects import ObjectInfo, ObjectStore, store_of

REGION = "cn-emulator"
MAX_KEYS = 1000
COUNTERS = "/_emulator/oss/counters"  # the emulator's own route: what it served, for tests and benchmarks
BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9-]{1,61}[a-z0-9]")  # OSS: 3-63, lower case, digits, inner hyphens
MIN_PART = 100 * 1024  # OSS: every part but the last must be at least 100 KiB


class OssError(Exception):
    STATUS = {"NoSuchBucket": 404, "NoSuchKey": 404, "NoSuchUpload": 404, "BucketNotEmpty": 409,
              "InvalidAccessKeyId": 403, "SignatureDoesNotMatch": 403, "AccessDenied": 403, "RequestTimeTooSkewed": 403, "InvalidDigest": 400,
              "InvalidPart": 400, "InvalidPartOrder": 400, "EntityTooSmall": 400, "InvalidArgument": 400,
              "InvalidBucketName": 400, "MalformedXML": 400, "InvalidRange": 416, "NotImplemented": 501,
              "BucketAlreadyExists": 409}

    def __init__(self, code: str, message: str, **extra: str):
        super().__init__(message)
        self.code, self.message, self.extra = code, message, extra


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(t))


def _xml(root: str, body: str, status: int = 200, headers: dict | None = None) -> Response:
    text = f'<?xml version="1.0" encoding="UTF-8"?>\n<{root}>{body}</{root}>'
    return Response(text, status_code=status, media_type="application/xml", headers=headers)


def _tags(**fields) -> str:
    return "".join(f"<{k}>{escape(str(v))}</{k}>" for k, v in fields.items())


def _error(err: OssError, rid: str, host: str, head: bool) -> Response:
    status = OssError.STATUS.get(err.code, 400)
    headers = {"x-oss-request-id": rid, "x-oss-ec": "0000-00000000"}
    if head:  # a HEAD answer has no body; clients read the code from the status
        return Response(status_code=status, headers=headers)
    body = _tags(Code=err.code, Message=err.message, RequestId=rid, HostId=host, **err.extra)
    return _xml("Error", body, status, headers)


def _object_headers(info: ObjectInfo) -> dict[str, str]:
    headers = {"ETag": f'"{info.etag}"', "x-oss-hash-crc64ecma": info.crc64,
               "Last-Modified": formatdate(info.mtime, usegmt=True), "x-oss-object-type": info.kind,
               "x-oss-storage-class": "Standard", "Accept-Ranges": "bytes"}
    headers.update({f"x-oss-meta-{k}": v for k, v in info.meta.items()})
    return headers


def _user_meta(request: Request) -> dict[str, str]:
    return {k[len("x-oss-meta-"):]: v for k, v in request.headers.items() if k.lower().startswith("x-oss-meta-")}


def verify(request: Request, path: str) -> None:
    """The request's OSS signature (V1 or V4) over `path`, or the OssError OSS answers."""
    signed = SignedRequest(request.method, path, list(request.query_params.multi_items()),
                           {k.lower(): v for k, v in request.headers.items()})
    try:
        verify_oss(signed, request.app.state.emulator.keys)
    except AuthError as e:
        extra = {"OSSAccessKeyId": e.access_key_id} if e.access_key_id else {}
        if e.string_to_sign:
            extra["StringToSign"] = e.string_to_sign
        raise OssError(e.code, e.message, **extra) from None


class Oss:
    def __init__(self, store: ObjectStore):
        self.store = store

    async def handle(self, request: Request, path: str) -> Response:
        rid = uuid.uuid4().hex.upper()[:24]
        bucket, _, key = path.partition("/")
        try:
            verify(request, f"/{bucket}/{key}" if bucket else "/")
            response = await self.dispatch(request, bucket, key)
        except OssError as e:
            return _error(e, rid, request.headers.get("host", ""), request.method == "HEAD")
        response.headers["x-oss-request-id"] = rid
        response.headers["Server"] = "AliyunOSS"
        return response

    async def dispatch(self, request: Request, bucket: str, key: str) -> Response:
        q = request.query_params
        m = request.method
        if not bucket:
            if m == "GET":
                return self.list_buckets()
            raise OssError("NotImplemented", f"{m} / is not supported")
        if not key:
            return await self.bucket_op(request, bucket)
        self.need_bucket(bucket)
        if "uploadId" in q:
            upload_id = q["uploadId"]
            if m == "PUT":
                return await self.upload_part(request, upload_id, q.get("partNumber", ""))
            if m == "POST":
                return await self.complete(request, bucket, key, upload_id)
            if m == "GET":
                return self.list_parts(bucket, key, upload_id, q)
            if m == "DELETE":
                self.need_upload(upload_id)
                self.store.abort(upload_id)
                return Response(status_code=204)
        if "uploads" in q and m == "POST":
            upload_id = self.store.initiate(bucket, key, request.headers.get("content-type", "application/octet-stream"),
                                            _user_meta(request))
            return _xml("InitiateMultipartUploadResult", _tags(Bucket=bucket, Key=key, UploadId=upload_id))
        if m == "PUT" and "x-oss-copy-source" in request.headers:
            return self.copy(request, bucket, key)
        if m == "PUT":
            return await self.put(request, bucket, key)
        if m in ("GET", "HEAD"):
            return self.get(request, bucket, key)
        if m == "DELETE":
            self.store.delete(bucket, key)
            return Response(status_code=204)
        raise OssError("NotImplemented", f"{m} on an object with {sorted(q)} is not supported by the emulator")

    def need_bucket(self, bucket: str) -> None:
        if self.store.bucket(bucket) is None:
            raise OssError("NoSuchBucket", "The specified bucket does not exist.", BucketName=bucket)

    def need_upload(self, upload_id: str):
        up = self.store.upload(upload_id)
        if up is None:
            raise OssError("NoSuchUpload", "The specified upload does not exist. The upload ID may be invalid, "
                           "or the upload may have been aborted or completed.", UploadId=upload_id)
        return up

    # --- buckets ---
    def list_buckets(self) -> Response:
        items = "".join("<Bucket>" + _tags(Name=b["name"], Location=f"oss-{b['region']}", CreationDate=_iso(b["created"]),
                                           ExtranetEndpoint="127.0.0.1", IntranetEndpoint="127.0.0.1",
                                           Region=b["region"], StorageClass="Standard") + "</Bucket>"
                        for b in self.store.buckets())
        return _xml("ListAllMyBucketsResult", f"<Owner>{_tags(ID='emulator', DisplayName='emulator')}</Owner>"
                    f"<Buckets>{items}</Buckets>")

    async def bucket_op(self, request: Request, bucket: str) -> Response:
        m, q = request.method, request.query_params
        if m == "PUT" and not q:
            if not BUCKET_NAME.fullmatch(bucket):
                raise OssError("InvalidBucketName", "The specified bucket is not valid.", BucketName=bucket)
            if bucket == "api":
                raise OssError("InvalidBucketName", "`api` is reserved by the emulator's POP APIs.", BucketName=bucket)
            self.store.create_bucket(bucket, REGION)
            return Response(status_code=200)
        self.need_bucket(bucket)
        if m == "DELETE" and not q:
            why = self.store.delete_bucket(bucket)
            if why:
                raise OssError(why, "The bucket you tried to delete is not empty.", BucketName=bucket)
            return Response(status_code=204)
        if m == "GET" and "bucketInfo" in q:
            b = self.store.bucket(bucket)
            return _xml("BucketInfo", "<Bucket>" + _tags(Name=bucket, Location=f"oss-{b['region']}",
                                                         CreationDate=_iso(b["created"]), StorageClass="Standard",
                                                         ExtranetEndpoint="127.0.0.1", IntranetEndpoint="127.0.0.1")
                        + f"<Owner>{_tags(ID='emulator', DisplayName='emulator')}</Owner>"
                        "<AccessControlList><Grant>private</Grant></AccessControlList></Bucket>")
        if m == "POST" and "delete" in q:
            return await self.batch_delete(request, bucket)
        if m == "GET" and not ({"uploads", "acl", "location", "bucketInfo"} & set(q)):
            return self.list_objects(bucket, q)
        raise OssError("NotImplemented", f"{m} on a bucket with {sorted(q)} is not supported by the emulator")

    async def batch_delete(self, request: Request, bucket: str) -> Response:
        try:
            root = ElementTree.fromstring(await request.body())
        except ElementTree.ParseError:
            raise OssError("MalformedXML", "The XML you provided was not well-formed.") from None
        keys = [o.findtext("Key") or "" for o in root.findall("Object")]
        for k in keys:
            self.store.delete(bucket, k)
        quiet = (root.findtext("Quiet") or "false") == "true"
        body = "" if quiet else "".join(f"<Deleted>{_tags(Key=k)}</Deleted>" for k in keys)
        return _xml("DeleteResult", body)

    def list_objects(self, bucket: str, q) -> Response:
        v2 = q.get("list-type") == "2"
        prefix, delimiter = q.get("prefix", ""), q.get("delimiter", "")
        try:
            max_keys = min(int(q.get("max-keys", MAX_KEYS)), MAX_KEYS)
        except ValueError:
            raise OssError("InvalidArgument", "max-keys must be an integer") from None
        encode = q.get("encoding-type") == "url"
        enc = (lambda s: quote(s, safe="")) if encode else (lambda s: s)
        if v2:
            token = q.get("continuation-token", "")
            after = base64.urlsafe_b64decode(token.encode()).decode() if token else q.get("start-after", "")
        else:
            after = q.get("marker", "")
        contents, prefixes, last, truncated = [], [], after, False
        while len(contents) + len(prefixes) < max_keys:
            batch = self.store.list(bucket, prefix, last, max_keys + 1)
            if not batch:
                break
            for info in batch:
                if len(contents) + len(prefixes) >= max_keys:
                    truncated = True
                    break
                rest = info.key[len(prefix):]
                if delimiter and delimiter in rest:
                    common = prefix + rest[:rest.index(delimiter) + len(delimiter)]
                    prefixes.append(common)
                    last = common + "\U0010ffff"  # skip the rest of this common prefix
                    break
                contents.append(info)
                last = info.key
            else:
                continue
            if truncated:
                break
        if not truncated and len(contents) + len(prefixes) >= max_keys:
            truncated = bool(self.store.list(bucket, prefix, last, 1))
        items = "".join("<Contents>" + _tags(Key=enc(i.key), LastModified=_iso(i.mtime), ETag=f'"{i.etag}"',
                                             Type=i.kind, Size=i.size, StorageClass="Standard")
                        + f"<Owner>{_tags(ID='emulator', DisplayName='emulator')}</Owner></Contents>" for i in contents)
        items += "".join(f"<CommonPrefixes>{_tags(Prefix=enc(p))}</CommonPrefixes>" for p in prefixes)
        head = _tags(Name=bucket, Prefix=enc(prefix), MaxKeys=max_keys, Delimiter=enc(delimiter),
                     IsTruncated=str(truncated).lower())
        if encode:
            head += _tags(EncodingType="url")
        if v2:
            head += _tags(KeyCount=len(contents) + len(prefixes))
            if truncated:
                head += _tags(NextContinuationToken=base64.urlsafe_b64encode(last.encode()).decode())
            return _xml("ListBucketResult", head + items)
        head += _tags(Marker=enc(after))
        if truncated:
            head += _tags(NextMarker=enc(last))
        return _xml("ListBucketResult", head + items)

    # --- objects ---
    async def _receive(self, request: Request):
        w = self.store.new_blob()
        try:
            async for chunk in request.stream():
                w.write(chunk)
        finally:
            w.close()
        md5 = request.headers.get("content-md5")
        if md5 and base64.b64encode(w.md5.digest()).decode() != md5:
            w.blob.unlink(missing_ok=True)
            raise OssError("InvalidDigest", "The Content-MD5 you specified was invalid.")
        return w

    async def put(self, request: Request, bucket: str, key: str) -> Response:
        w = await self._receive(request)
        info = self.store.commit(bucket, key, w, request.headers.get("content-type", "application/octet-stream"),
                                 _user_meta(request))
        self.store.count("PutObject")
        return Response(status_code=200, headers={"ETag": f'"{info.etag}"', "x-oss-hash-crc64ecma": info.crc64,
                                                  "Content-MD5": base64.b64encode(bytes.fromhex(info.etag)).decode()})

    def get(self, request: Request, bucket: str, key: str) -> Response:
        info = self.store.head(bucket, key)
        if info is None:
            raise OssError("NoSuchKey", "The specified key does not exist.", Key=key)
        headers = _object_headers(info)
        op = "HeadObject" if request.method == "HEAD" else "GetObject"
        self.store.count(op)
        self.store.count(f"{op} {bucket}/{key}")  # which objects a client read: tests check nothing moved
        if request.method == "HEAD":
            return Response(status_code=200, headers={**headers, "Content-Length": str(info.size),
                                                      "Content-Type": info.content_type})
        rng = request.headers.get("range", "")
        if rng.startswith("bytes=") and info.size:
            start_s, _, end_s = rng[6:].partition("-")
            try:
                start = int(start_s) if start_s else info.size - int(end_s)
                end = min(int(end_s), info.size - 1) if end_s and start_s else info.size - 1
            except ValueError:
                start, end = 0, info.size - 1  # OSS ignores a malformed range
            if 0 <= start <= end:
                with open(self.store.path(info), "rb") as f:
                    f.seek(start)
                    data = f.read(end - start + 1)
                headers.pop("x-oss-hash-crc64ecma")  # it describes the whole object
                return Response(data, status_code=206, media_type=info.content_type,
                                headers={**headers, "Content-Range": f"bytes {start}-{end}/{info.size}"})
        return FileResponse(self.store.path(info), media_type=info.content_type, headers=headers)

    def copy(self, request: Request, bucket: str, key: str) -> Response:
        from urllib.parse import unquote

        src_bucket, _, src_key = unquote(request.headers["x-oss-copy-source"]).lstrip("/").partition("/")
        self.need_bucket(src_bucket)
        src = self.store.head(src_bucket, src_key)
        if src is None:
            raise OssError("NoSuchKey", "The specified key does not exist.", Key=src_key)
        replace = request.headers.get("x-oss-metadata-directive", "COPY").upper() == "REPLACE"
        info = self.store.copy(src, bucket, key, _user_meta(request) if replace else None)
        return _xml("CopyObjectResult", _tags(ETag=f'"{info.etag}"', LastModified=_iso(info.mtime)),
                    headers={"x-oss-hash-crc64ecma": info.crc64})

    # --- multipart ---
    async def upload_part(self, request: Request, upload_id: str, number_s: str) -> Response:
        self.need_upload(upload_id)
        number = _integer(number_s)
        if number is None or not 1 <= number <= 10000:
            raise OssError("InvalidArgument", "Part number must be an integer between 1 and 10000, inclusive.")
        w = await self._receive(request)
        part = self.store.put_part(upload_id, number, w)
        self.store.count("UploadPart")
        return Response(status_code=200, headers={"ETag": f'"{part["etag"]}"', "x-oss-hash-crc64ecma": part["crc64"]})

    def list_parts(self, bucket: str, key: str, upload_id: str, q) -> Response:
        self.need_upload(upload_id)
        marker, limit = _integer(q.get("part-number-marker") or "0"), _integer(q.get("max-parts") or "1000")
        if marker is None or limit is None or limit < 1:
            raise OssError("InvalidArgument", "part-number-marker and max-parts must be whole numbers (max-parts >= 1)")
        limit = min(limit, 1000)
        parts = self.store.parts(upload_id, marker, limit + 1)
        truncated = len(parts) > limit
        parts = parts[:limit]
        body = _tags(Bucket=bucket, Key=key, UploadId=upload_id, PartNumberMarker=marker,
                     NextPartNumberMarker=parts[-1]["number"] if parts else marker, MaxParts=limit,
                     IsTruncated=str(truncated).lower())
        body += "".join("<Part>" + _tags(PartNumber=p["number"], LastModified=_iso(p["mtime"]), ETag=f'"{p["etag"]}"',
                                         HashCrc64ecma=p["crc64"], Size=p["size"]) + "</Part>" for p in parts)
        return _xml("ListPartsResult", body)

    async def complete(self, request: Request, bucket: str, key: str, upload_id: str) -> Response:
        self.need_upload(upload_id)
        stored = {p["number"]: p for p in self.store.parts(upload_id, 0, 100000)}
        if request.headers.get("x-oss-complete-all") == "yes":
            numbers = sorted(stored)
        else:
            try:
                root = ElementTree.fromstring(await request.body())
            except ElementTree.ParseError:
                raise OssError("MalformedXML", "The XML you provided was not well-formed.") from None
            numbers = []
            for part in root.findall("Part"):
                n = _integer(part.findtext("PartNumber") or "")
                if n is None:
                    raise OssError("InvalidArgument", "PartNumber must be a whole number, e.g. <PartNumber>1</PartNumber>")
                etag = (part.findtext("ETag") or "").strip('"').upper()
                if n not in stored or stored[n]["etag"] != etag:
                    raise OssError("InvalidPart", "One or more of the specified parts could not be found or the "
                                   "specified entity tag might not have matched the part's entity tag.", PartNumber=str(n))
                numbers.append(n)
            if numbers != sorted(set(numbers)):
                raise OssError("InvalidPartOrder", "The list of parts was not in ascending order.")
        for n in numbers[:-1]:
            if stored[n]["size"] < MIN_PART:
                raise OssError("EntityTooSmall", "Your proposed upload is smaller than the minimum allowed size.",
                               PartNumber=str(n))
        info = self.store.complete(upload_id, numbers)
        self.store.count("CompleteMultipartUpload")
        return _xml("CompleteMultipartUploadResult",
                    _tags(Location=f"http://{request.headers.get('host', '')}/{bucket}/{key}", Bucket=bucket, Key=key,
                          ETag=f'"{info.etag}"'), headers={"x-oss-hash-crc64ecma": info.crc64})


def _integer(text: str) -> int | None:
    """A decimal whole number as OSS reads one, or None: ASCII digits only (`str.isdigit` passes `²`,
    which `int` refuses, and `int` takes `1_000`, which OSS does not)."""
    text = text.strip()
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 18 else None


def router(emulator) -> APIRouter:
    r = APIRouter()
    oss = Oss(store_of(emulator))

    @r.get(COUNTERS, include_in_schema=False)
    def counters(request: Request) -> Response:
        """Requests the OSS emulator served, by operation (UploadPart, PutObject, GetObject, ...), and reads by
        object (`GetObject BUCKET/KEY`, `HeadObject BUCKET/KEY`). Jobs' mounts read the store directly, so
        every read counted here is a client's. Signed as an OSS request (object names are the users')."""
        try:
            verify(request, COUNTERS)
        except OssError as e:
            return _error(e, uuid.uuid4().hex.upper()[:24], request.headers.get("host", ""), False)
        return JSONResponse(oss.store.counters())

    @r.api_route("/{path:path}", methods=["GET", "HEAD", "PUT", "POST", "DELETE"], include_in_schema=False)
    async def any_request(request: Request, path: str) -> Response:
        return await oss.handle(request, path)

    return r
