"""What the MONAI Label server gets on top of MONAI Label 0.8.5, to be safe by default.

MONAI Label 0.8.5 as shipped (read in its source): every origin passes CORS; image ids and label tags
are joined to the studies folder unchecked (``?image=../x`` writes outside it, an absolute id is read
as is); uploads have no size limit; an upload's temporary file is removed only when the request
succeeds; ``/infer`` is an ``async`` endpoint that runs the whole inference on the event loop, so one
long request blocks every other one, ``/info/`` included; unhandled errors are bare 500s.

``install(app, options)`` (called by app/main.py when MONAI Label builds the app) changes that:

- ``RequestGuard``, an ASGI wrapper around the whole app: clients other than loopback are refused
  (403) unless ``allow_remote``; a request with an ``Origin`` header not in ``allowed_origins`` (default:
  loopback origins only) is refused (403) before anything runs; ids in the query (``image``, ``id``,
  ``label``, ``tag``, ``label_tag``, ``session_id``) must pass ``params.check_id`` (400); a body over
  ``max_request_bytes`` is refused from its Content-Length (413) before it is read, and a body that
  comes without one is refused (411); only the endpoints an annotator needs are served (404 otherwise:
  no model upload, training, logs or DICOM proxy).
- The upload endpoints (``POST /infer/{model}``, ``PUT /datastore/image``, ``PUT /datastore/label``) are
  replaced by ones that check ids and image size (header only) before the datastore sees anything,
  keep each upload in a private temporary folder removed on every path (success or error), and run
  the inference in a worker thread with a time limit (503 past it; ``/info/`` keeps answering).
- ``checked_datastore_class()``: the local datastore with every id and tag checked again, and no server path
  in the image info it returns.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from diskrobust.serving.io import MAX_IMAGE_SIDE_PX, MAX_IMAGE_VOXELS, check_image_size
from diskrobust.serving.params import check_id, parse_params_json
from diskrobust.data.errors import DataError

logger = logging.getLogger(__name__)

__all__ = ["ServerOptions", "RequestGuard", "checked_datastore_class", "install", "is_loopback_origin"]

ID_QUERY_KEYS = ("image", "id", "label", "tag", "label_tag", "session_id")
UPLOAD_SUFFIXES = (".nii.gz", ".nii")
# Path prefixes served (the rest of MONAI Label's API is not needed by an annotator and stays closed).
SERVED_PREFIXES = ("/info/", "/infer/", "/datastore/", "/activelearning/", "/static/")
SERVED_EXACT = ("/", "/docs", "/openapi.json", "/favicon.ico", "/info", "/datastore")
GUARD_MARK = "_diskrobust_guarded"


@dataclass
class ServerOptions:
    """The server's safety settings (``--conf`` keys of app/main.py in brackets)."""

    allowed_origins: tuple[str, ...] = ()  # [cors_origins] besides loopback; "*" allows every origin
    allow_remote: bool = False  # [allow_remote] serve clients that are not on this machine
    max_request_bytes: int = 64 * 1024 * 1024  # [max_request_mb]
    max_image_side_px: int = MAX_IMAGE_SIDE_PX  # [max_image_side_px]
    max_image_voxels: int = MAX_IMAGE_VOXELS
    infer_timeout_s: float = 120.0  # [infer_timeout_s]
    infer_workers: int = 1  # [infer_workers] inferences run at once; more wait their turn
    served_prefixes: tuple[str, ...] = field(default=SERVED_PREFIXES)

    @classmethod
    def from_conf(cls, conf: dict[str, str]) -> "ServerOptions":
        """Options from MONAI Label's ``--conf`` pairs; ValueError naming the key for a bad value."""
        def number(key: str, default: float, low: float) -> float:
            raw = conf.get(key)
            if raw in (None, ""):
                return default
            try:
                value = float(raw)
            except ValueError:
                raise ValueError(f"--conf {key} must be a number, got {raw!r}") from None
            if not value >= low:
                raise ValueError(f"--conf {key} must be at least {low:g}, got {raw!r}")
            return value

        origins = tuple(o.strip().rstrip("/") for o in conf.get("cors_origins", "").split(",") if o.strip())
        remote = str(conf.get("allow_remote", "false")).strip().lower()
        if remote not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"--conf allow_remote must be true or false, got {remote!r}")
        return cls(
            allowed_origins=origins,
            allow_remote=remote in ("true", "1", "yes"),
            max_request_bytes=int(number("max_request_mb", 64, 0.001) * 1024 * 1024),
            max_image_side_px=int(number("max_image_side_px", MAX_IMAGE_SIDE_PX, 16)),
            infer_timeout_s=number("infer_timeout_s", 120.0, 1.0),
            infer_workers=int(number("infer_workers", 1, 1)),
        )


def _is_loopback_host(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_loopback_origin(origin: str) -> bool:
    """Whether an ``Origin`` header names a page served from this machine (http(s)://127.x, localhost, [::1])."""
    parts = urlsplit(origin)
    return parts.scheme in ("http", "https") and parts.hostname is not None and _is_loopback_host(parts.hostname)


async def _send_error(send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class RequestGuard:
    """ASGI wrapper refusing what MONAI Label would accept unchecked (see the module docstring)."""

    def __init__(self, app, options: ServerOptions):
        self.app = app
        self.options = options

    def origin_allowed(self, origin: str) -> bool:
        allowed = self.options.allowed_origins
        return "*" in allowed or origin.rstrip("/") in allowed or is_loopback_origin(origin)

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            return await self.app(scope, receive, send)
        if scope["type"] != "http":  # no websockets here
            return await send({"type": "websocket.close", "code": 1008})
        client = scope.get("client")
        if not self.options.allow_remote and client and not _is_loopback_host(str(client[0])):
            return await _send_error(send, 403, "this server answers only clients on its own machine "
                                                "(start it with --conf allow_remote true to change that)")
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        origin = headers.get("origin")
        if origin is not None and not self.origin_allowed(origin):
            return await _send_error(send, 403, f"origin {origin[:100]!r} is not allowed "
                                                "(--conf cors_origins lists the allowed ones)")
        path = scope.get("path", "")
        if not (path in SERVED_EXACT or path.startswith(self.options.served_prefixes)):
            return await _send_error(send, 404, f"{path[:100]} is not served by this app")
        for key, value in parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True):
            if key in ID_QUERY_KEYS and value != "":
                try:
                    check_id(value, key)
                except ValueError as err:
                    return await _send_error(send, 400, str(err))
        if scope.get("method") in ("POST", "PUT", "PATCH"):
            length = headers.get("content-length")
            if length is None:
                if "chunked" in headers.get("transfer-encoding", ""):
                    return await _send_error(send, 411, "send the request with a Content-Length")
            else:
                try:
                    size = int(length)
                except ValueError:
                    return await _send_error(send, 400, "bad Content-Length")
                limit = self.options.max_request_bytes
                if size > limit:
                    return await _send_error(send, 413, f"request of {size} bytes is over the server's limit "
                                                        f"of {limit} bytes (--conf max_request_mb)")
        return await self.app(scope, receive, send)


def _check_datastore_id(value: str, what: str) -> str:
    from fastapi import HTTPException

    try:
        return check_id(value, what)
    except ValueError as err:
        raise HTTPException(status_code=400, detail=str(err)) from None


def checked_datastore_class():
    """``CheckedDatastore``: MONAI Label's LocalDatastore with every id and tag checked (HTTP 400)."""
    from monailabel.datastore.local import LocalDatastore

    class CheckedDatastore(LocalDatastore):
        def add_image(self, image_id, image_filename, image_info):
            if image_id:
                _check_datastore_id(image_id, "image id")
            return super().add_image(image_id, image_filename, image_info)

        def save_label(self, image_id, label_filename, label_tag, label_info):
            _check_datastore_id(image_id, "image id")
            _check_datastore_id(label_tag, "label tag")
            return super().save_label(image_id, label_filename, label_tag, label_info)

        def get_image_uri(self, image_id):
            return super().get_image_uri(_check_datastore_id(image_id, "image id"))

        def get_label_uri(self, label_id, label_tag):
            _check_datastore_id(label_tag, "label tag")
            return super().get_label_uri(_check_datastore_id(label_id, "label id"), label_tag)

        def remove_image(self, image_id):
            return super().remove_image(_check_datastore_id(image_id, "image id"))

        def remove_label(self, label_id, label_tag):
            _check_datastore_id(label_tag, "label tag")
            return super().remove_label(_check_datastore_id(label_id, "label id"), label_tag)

        def get_image_info(self, image_id):
            info = super().get_image_info(_check_datastore_id(image_id, "image id"))
            info.pop("path", None)  # a server path
            return info

        def get_label_info(self, label_id, label_tag):
            _check_datastore_id(label_tag, "label tag")
            info = super().get_label_info(_check_datastore_id(label_id, "label id"), label_tag)
            info.pop("path", None)
            return info

        def update_image_info(self, image_id, info):
            return super().update_image_info(_check_datastore_id(image_id, "image id"), info)

        def update_label_info(self, label_id, label_tag, info):
            _check_datastore_id(label_tag, "label tag")
            return super().update_label_info(_check_datastore_id(label_id, "label id"), label_tag, info)

    return CheckedDatastore


# ---------------------------------------------------------------------------------------------------
# the upload endpoints
# ---------------------------------------------------------------------------------------------------


def _upload_suffix(filename: str | None) -> str:
    from fastapi import HTTPException

    name = (filename or "image.nii.gz").lower()
    for suffix in UPLOAD_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    raise HTTPException(status_code=415, detail="upload a NIfTI file (.nii or .nii.gz)")


async def _save_upload(upload, folder: str, stem: str, options: ServerOptions) -> str:
    """Write an upload into ``folder``; check its image size from the header (422 when too large)."""
    from fastapi import HTTPException

    suffix = _upload_suffix(getattr(upload, "filename", None))
    path = os.path.join(folder, stem + suffix)
    with open(path, "wb") as out:
        while chunk := await upload.read(1024 * 1024):
            out.write(chunk)
    try:
        check_image_size(path, options.max_image_side_px, options.max_image_voxels)
    except DataError as err:
        raise HTTPException(status_code=422, detail=err.problem) from None
    return path


def _form_limits(options: ServerOptions) -> dict[str, int]:
    return {"max_files": 2, "max_fields": 20, "max_part_size": options.max_request_bytes}


def _params_or_400(form) -> dict[str, Any]:
    from fastapi import HTTPException

    try:
        return parse_params_json(form.get("params"))
    except ValueError as err:
        raise HTTPException(status_code=400, detail=str(err)) from None


def make_endpoints(options: ServerOptions):
    """The three replacement endpoints (async; the work runs in worker threads)."""
    import anyio
    from fastapi import BackgroundTasks, HTTPException, Request
    from fastapi.responses import JSONResponse, Response
    from monailabel.endpoints.infer import send_response
    from monailabel.interfaces.exception import MONAILabelException
    from monailabel.interfaces.utils.app import app_instance

    limiter = anyio.CapacityLimiter(max(1, int(options.infer_workers)))

    async def infer(request: Request, model: str, image: str = "", output: str | None = None):
        instance = app_instance()
        if model not in instance.info().get("models", {}):
            raise HTTPException(status_code=404, detail=f"no model {model!r}; models: {sorted(instance.info().get('models', {}))}")
        if output not in (None, "json", "image", "all"):
            raise HTTPException(status_code=400, detail=f"output must be json, image or all, got {output!r}")
        folder = tempfile.mkdtemp(prefix="diskrobust-upload-")
        try:
            async with request.form(**_form_limits(options)) as form:
                params = _params_or_400(form)
                upload = form.get("file")
                if upload is not None and not isinstance(upload, str):
                    path = await _save_upload(upload, folder, "image", options)
                elif image:
                    path = instance.datastore().get_image_uri(image)
                    if not path or not os.path.isfile(path):
                        raise HTTPException(status_code=404, detail=f"image {image!r} is not in the datastore")
                    try:
                        check_image_size(path, options.max_image_side_px, options.max_image_voxels)
                    except DataError as err:
                        raise HTTPException(status_code=422, detail=err.problem) from None
                else:
                    raise HTTPException(status_code=400, detail="give an image id (?image=...) or upload a file")
            req = dict(instance.info().get("config", {}).get("infer", {}))
            req.update(params)
            if "label_tag" in req:
                _check_datastore_id(str(req["label_tag"]), "label_tag")
            req.update(model=model, image=path, save_label=False,
                       deadline=time.monotonic() + options.infer_timeout_s)
            try:
                with anyio.fail_after(options.infer_timeout_s + 5.0):
                    result = await anyio.to_thread.run_sync(instance.infer, req, limiter=limiter,
                                                            abandon_on_cancel=True)
            except TimeoutError:
                raise HTTPException(status_code=503, detail=f"inference ran past the server's limit of "
                                                            f"{options.infer_timeout_s:g} s (--conf infer_timeout_s)") from None
            except MONAILabelException as err:
                raise HTTPException(status_code=400, detail=str(err.msg if hasattr(err, "msg") else err)) from None
            background = BackgroundTasks()
            response = send_response(instance.datastore(), result, output, background)
            if not isinstance(response, Response):
                response = JSONResponse(response)
            response.background = background
            return response
        except HTTPException:
            raise
        except Exception as err:  # no server detail to the client; the log has the traceback
            logger.exception("inference failed")
            raise HTTPException(status_code=500, detail=f"inference failed ({type(err).__name__}); see the server log") from None
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    async def put_image(request: Request, image: str = ""):
        instance = app_instance()
        folder = tempfile.mkdtemp(prefix="diskrobust-upload-")
        try:
            async with request.form(**_form_limits(options)) as form:
                params = _params_or_400(form)
                upload = form.get("file")
                if upload is None or isinstance(upload, str):
                    raise HTTPException(status_code=400, detail="no file: send the image as the form field 'file'")
                image_id = image or _stem(getattr(upload, "filename", "") or "")
                _check_datastore_id(image_id, "image id")
                path = await _save_upload(upload, folder, image_id, options)
            image_id = await anyio.to_thread.run_sync(instance.datastore().add_image, image_id, path, params)
            return {"image": image_id}
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    async def put_label(request: Request, image: str, tag: str = "final"):
        instance = app_instance()
        _check_datastore_id(image, "image id")
        _check_datastore_id(tag or "final", "label tag")
        folder = tempfile.mkdtemp(prefix="diskrobust-upload-")
        try:
            async with request.form(**_form_limits(options)) as form:
                params = _params_or_400(form)
                upload = form.get("label")
                if upload is None or isinstance(upload, str):
                    raise HTTPException(status_code=400, detail="no label: send it as the form field 'label'")
                path = await _save_upload(upload, folder, "label", options)
            label_id = await anyio.to_thread.run_sync(instance.datastore().save_label, image, path, tag or "final", params)
            return {"image": image, "label": label_id}
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    return {("POST", "/infer/{model}"): infer, ("PUT", "/datastore/image"): put_image,
            ("PUT", "/datastore/"): put_image, ("PUT", "/datastore/label"): put_label}


def _stem(filename: str) -> str:
    name = os.path.basename(filename.replace("\\", "/"))
    for suffix in UPLOAD_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _add_routes_first(app, endpoints: dict, prefix: str = "") -> list[str]:
    """Put our endpoints before MONAI Label's: Starlette serves the first route that matches fully."""
    from fastapi.routing import APIRoute

    added = []
    for (method, path), endpoint in reversed(list(endpoints.items())):
        full = prefix + path
        app.router.routes.insert(0, APIRoute(full, endpoint, methods=[method], include_in_schema=True))
        added.append(f"{method} {full}")
    return added[::-1]


def install(app, options: ServerOptions) -> bool:
    """Guard MONAI Label's FastAPI ``app`` (idempotent; False when it was guarded already).

    Called while MONAI Label starts (its lifespan creates the app instance, whose __init__ calls
    this): our upload routes go before MONAI Label's (the first full match serves a request) and the
    guard wraps the built middleware stack, which Starlette calls for every request after start-up.
    """
    if getattr(app.state, GUARD_MARK, False):
        return False
    from monailabel.config import settings

    replaced = _add_routes_first(app, make_endpoints(options), settings.MONAI_LABEL_API_STR)
    if app.middleware_stack is None:
        app.middleware_stack = app.build_middleware_stack()
    app.middleware_stack = RequestGuard(app.middleware_stack, options)
    setattr(app.state, GUARD_MARK, True)
    logger.info(f"diskrobust guard installed: {', '.join(replaced)} served by diskrobust; remote clients "
                f"{'allowed' if options.allow_remote else 'refused'}; origins: loopback"
                f"{' + ' + ', '.join(options.allowed_origins) if options.allowed_origins else ''}; "
                f"max request {options.max_request_bytes} bytes; inference limit {options.infer_timeout_s:g} s")
    return True
