"""A fake gs:// for tests: etils.epath (via fsspec) and orbax (via tensorstore) on a local dir.

Inside ``fake_gcs(root)``, ``gs://bucket/x`` is ``root/bucket/x``. It behaves as GCS does
where that matters to us: an object cannot be opened for appending. Only the last step of the
path (the fsspec file system, and the tensorstore driver orbax picks for gs://) is local, so
any code that turns a ``gs://`` string into a local path (``os.path.abspath``, ``open``) writes
somewhere else (``./gs:/...``) and fails the test that looks in ``root``.
"""

import contextlib
import sys
from unittest import mock

import fsspec
import fsspec.registry
from etils.epath import backend
from fsspec.implementations.local import LocalFileSystem
from orbax.checkpoint._src.path import gcs_utils

_PREFIXES = ("gs://", "gcs://")


def _make_filesystem(root: str) -> type[LocalFileSystem]:
    class FakeGCSFileSystem(LocalFileSystem):
        protocol = ("gcs", "gs")

        def __init__(self, *args, finalize_on_close=None, **kwargs):
            del finalize_on_close  # a gcsfs option
            super().__init__(*args, **kwargs)

        @classmethod
        def _strip_protocol(cls, path):
            path = str(path)
            if path.startswith(_PREFIXES):
                path = f"{root}/{path.split('://', 1)[1]}"
            return super()._strip_protocol(path)

        def open(self, path, mode="rb", **kwargs):
            if "a" in mode:
                raise NotImplementedError(f"GCS objects cannot be appended to: {path}")
            return super().open(path, mode, **kwargs)

        def glob(self, path, **kwargs):
            # Back to bucket/... names: epath puts "gs://" in front of what glob returns.
            return [p[len(root) + 1 :] for p in super().glob(path, **kwargs)]

    return FakeGCSFileSystem


@contextlib.contextmanager
def fake_gcs(root: str):
    """Maps ``gs://`` to the local directory ``root`` while the context is open."""

    def kvstore(path: str) -> dict:
        return {"driver": "file", "path": f"{root}/{str(path).split('://', 1)[1]}"}

    registry = sys.modules["fsspec.registry"]._registry  # the mutable one behind fsspec.registry
    saved = {p: registry.get(p) for p in ("gcs", "gs")}
    filesystem = _make_filesystem(str(root))
    for protocol in saved:
        fsspec.register_implementation(protocol, filesystem, clobber=True)
    backend.fsspec_backend._get_filesystem.cache_clear()
    try:
        with (
            mock.patch.object(gcs_utils, "get_kvstore_for_gcs", kvstore),
            mock.patch.object(gcs_utils, "is_hierarchical_namespace_enabled", lambda path: False),
        ):
            yield
    finally:
        for protocol, cls in saved.items():
            if cls is None:
                registry.pop(protocol, None)
            else:
                registry[protocol] = cls
        backend.fsspec_backend._get_filesystem.cache_clear()
