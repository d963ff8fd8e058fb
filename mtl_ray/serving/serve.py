"""`mtl-ray serve`: a trained model behind an HTTP endpoint, as a Ray Serve application.

One deployment, `Predictor`: `POST /predict` takes one image as the body, a multipart upload or
JSON `{"images": [BASE64, ...]}` (`mtl_ray.serving.http`) and answers `{"model_version": "3",
"predictions": [{TASK: p, ...}, ...]}`, one entry per image in order; `GET /healthz` answers 200
once the model is loaded. Requests are batched with `@serve.batch` (all images of one request in
one batch, so one version answers all of them) and replicas autoscale between `min_replicas` and
`max_replicas` on `target_ongoing_requests`.

Serving `models:/NAME@ALIAS`, every replica checks the alias every `watch_s` seconds on a thread of
its own; when the alias moves it loads the new version beside the old one and swaps, so requests in
flight finish on the old model and none is dropped; each answer names the version that produced it.
Images are decoded and resized as training and the registered model do (`MultiTaskModel`).

`app_builder` is the application for Serve config files (`serve deploy`, KubeRay's RayService:
`import_path: mtl_ray.serving.serve:app_builder`); `serve` runs it on this Ray from the CLI.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass

import numpy as np
from ray import serve as ray_serve

from mtl_ray.config import ServeConfig
from mtl_ray.data.images import UnreadableImage, read_image
from mtl_ray.errors import UserError, describe
from mtl_ray.registry.sources import named
from mtl_ray.result import Result
from mtl_ray.serving.http import BadRequest, images_of

APP_NAME = "mtl-ray"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Loaded:
    """One version of the model, ready to predict."""

    version: str
    model: object
    """A `mtl_ray.registry.pyfunc.MultiTaskModel` with its network loaded."""


def load(uri: str, tracking_uri: str | None, device: str) -> Loaded:
    from mtl_ray.registry.pyfunc import MultiTaskModel
    from mtl_ray.registry.sources import load_trained

    trained = load_trained(uri, tracking_uri=tracking_uri)
    model = MultiTaskModel()
    model.load(trained.state, trained.meta, device)
    return Loaded(trained.version, model)


def _alias(uri: str) -> tuple[str, str] | None:
    """(name, alias) of a `models:/NAME@ALIAS` URI, else None."""
    if not uri.startswith("models:/") or "@" not in uri:
        return None
    name, _, alias = uri[len("models:/") :].partition("@")
    return name, alias


class Predictor:
    """The Serve deployment: see the module docstring."""

    def __init__(self, options: dict) -> None:
        self.options = ServeConfig(**options)
        self.device = "cuda" if self.options.gpu else "cpu"
        self.current = load(self.options.model, self.options.tracking_uri, self.device)
        self.predict.set_max_batch_size(self.options.max_batch_size)
        self.predict.set_batch_wait_timeout_s(self.options.batch_wait_ms / 1000)
        self.max_body = int(self.options.max_body_mb * 2**20)
        alias = _alias(self.options.model)
        if alias and self.options.watch_s > 0:
            threading.Thread(target=self._watch, args=alias, daemon=True).start()

    def _watch(self, name: str, alias: str) -> None:
        """Swap to the version `alias` points at whenever it moves (an MLflow error keeps the current one)."""
        from mtl_ray.registry import tracking

        client = tracking.connect(tracking.tracking_uri(self.options.tracking_uri))
        while True:
            time.sleep(self.options.watch_s)
            try:
                version = str(client.get_model_version_by_alias(name, alias).version)
                if version != self.current.version:
                    self.current = load(f"models:/{name}/{version}", self.options.tracking_uri, self.device)
                    log.info("mtl-ray serve: %s@%s moved to version %s", name, alias, version)
            except Exception as exc:  # keep serving what is loaded; say why on the replica's log
                log.warning("mtl-ray serve: checking %s@%s failed (%s)", name, alias, describe(exc))

    async def __call__(self, request):
        from starlette.responses import JSONResponse

        path = request.url.path.rstrip("/") or "/"
        if request.method == "GET" and path in ("/", "/healthz"):
            return JSONResponse({"status": "ok", "model": self.options.model, "model_version": self.current.version})
        if request.method == "POST" and path == "/predict":
            try:
                images = images_of(await request.body(), request.headers.get("content-type", ""), self.max_body)
                size, resize = self.current.model.size, self.current.model.resize
                pixels = await asyncio.to_thread(_decode, images, size, resize)
            except BadRequest as exc:
                return JSONResponse({"error": str(exc)}, status_code=400)
            version, tasks, probs = await self.predict((images, pixels))
            rows = [dict(zip(tasks, map(float, row), strict=True)) for row in probs]
            return JSONResponse({"model_version": version, "predictions": rows})
        routes = f"no route {request.method} {path}: POST /predict, GET /healthz"
        return JSONResponse({"error": routes}, status_code=404)

    def check_health(self) -> None:
        """Serve's replica health check: the model is loaded."""
        if self.current is None:
            raise RuntimeError("no model loaded")

    @ray_serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def predict(self, requests: list[tuple[list[bytes], np.ndarray]]) -> list[tuple[str, list, np.ndarray]]:
        """One forward pass for the images of every request in the batch, by one version."""
        loaded = self.current
        size, resize = loaded.model.size, loaded.model.resize
        arrays = [
            pixels if pixels.shape[1:3] == tuple(size) else _decode(images, size, resize)  # the version moved
            for images, pixels in requests
        ]
        probs = await asyncio.to_thread(loaded.model.probabilities, np.concatenate(arrays))
        ends = np.cumsum([len(a) for a in arrays])
        return [(loaded.version, loaded.model.tasks, chunk) for chunk in np.split(probs, ends[:-1])]


def _decode(images: list[bytes], size: tuple[int, int], resize: str) -> np.ndarray:
    """uint8 [N, H, W, 3] at the model's size; an unreadable image is a `BadRequest` naming it."""
    out = np.empty((len(images), *size, 3), np.uint8)
    for i, data in enumerate(images):
        try:
            out[i] = read_image(data, size=size, resize=resize)
        except UnreadableImage as exc:
            raise BadRequest(f"image {i}: {exc}") from None
    return out


def deployment(options: ServeConfig):
    """`Predictor` as a Serve deployment with the options' replicas and resources."""
    scaling = (
        {"num_replicas": options.min_replicas}
        if options.max_replicas <= max(options.min_replicas, 1)
        else {
            "autoscaling_config": {
                "min_replicas": options.min_replicas,
                "max_replicas": options.max_replicas,
                "target_ongoing_requests": options.target_ongoing_requests,
            }
        }
    )
    actor = {"num_cpus": options.replica_cpus, "num_gpus": 1 if options.gpu else 0}
    return ray_serve.deployment(
        Predictor,
        name="predictor",
        ray_actor_options=actor,
        max_ongoing_requests=options.max_ongoing_requests,
        **scaling,
    ).bind(options.model_dump())


def app_builder(args: dict):
    """The application a Serve config file names (`import_path: mtl_ray.serving.serve:app_builder`)."""
    return deployment(ServeConfig(**args))


@dataclass
class ServeResult(Result):
    """Where the model was served, which version answered first, and for how long."""

    model: str
    model_version: str
    url: str
    seconds: float

    def render(self) -> str:
        return f"served {named(self.model, self.model_version)} at {self.url} for {self.seconds:.0f} s"


def start(options: ServeConfig, host: str = "127.0.0.1", port: int = 8000) -> ServeResult:
    """Run the application on this process's Ray (started or joined), answering on host:port; returns
    once a replica is healthy."""
    import ray

    from mtl_ray.cluster.runtime import ensure_ray
    from mtl_ray.registry import tracking

    options = options.model_copy(update={"tracking_uri": tracking.tracking_uri(options.tracking_uri)})
    load(options.model, options.tracking_uri, "cpu")  # a bad URI is one line here, not a replica crash loop
    ensure_ray()
    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # its INFO lines would bury ours
    if options.gpu and ray.cluster_resources().get("GPU", 0) < max(options.min_replicas, 1):
        raise UserError(f"--gpu: the Ray cluster has {ray.cluster_resources().get('GPU', 0):g} GPUs")
    ray_serve.start(http_options={"host": host, "port": port})
    ray_serve.run(deployment(options), name=APP_NAME, route_prefix="/", blocking=False)
    url = f"http://{host}:{port}"
    version = _healthy(url)
    return ServeResult(options.model, version, url, 0.0)


def _healthy(url: str, timeout_s: float = 120.0) -> str:
    """The version the endpoint answers /healthz with, once it does."""
    import json
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=5) as answer:
                return json.loads(answer.read())["model_version"]
        except OSError:
            if time.monotonic() > deadline:
                raise UserError(f"{url}/healthz did not answer in {timeout_s:.0f} s; see the Serve logs") from None
            time.sleep(0.5)


def stop() -> None:
    """Remove the application (its replicas' resources go back); Serve itself stays for other apps."""
    ray_serve.delete(APP_NAME)


def serve(options: ServeConfig, host: str = "127.0.0.1", port: int = 8000) -> ServeResult:
    """`mtl-ray serve`: start, say where, serve until interrupted (Ctrl-C), then shut Serve down."""
    from mtl_ray import progress

    started = time.perf_counter()
    result = start(options, host, port)
    progress.say(
        f"serving {named(options.model, result.model_version)} at {result.url}: POST /predict, GET /healthz; "
        "Ctrl-C stops"
    )
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        stop()
    result.seconds = time.perf_counter() - started
    return result
