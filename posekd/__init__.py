"""PoseKD for Python users::

    import posekd
    people = posekd.Client("http://127.0.0.1:8000").pose("people.jpg").people   # through the service
    people = posekd.load()("people.jpg").people                                  # in this process

Both give :class:`PoseResult` objects (``people``: :class:`Person` with ``bbox``, ``score`` and a
(17, 3) ``keypoints`` array in COCO-17 order). The code lives in ``service.client``; this package is
its public name."""
from service import __version__
from service.client import APIError, AsyncClient, Client, Estimator, Person, PoseResult, VideoResult, load

__all__ = ["APIError", "AsyncClient", "Client", "Estimator", "Person", "PoseResult", "VideoResult", "__version__",
           "load"]
