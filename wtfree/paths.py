"""User paths as `etils.epath.Path`: local directories and URLs (gs://, s3://, ...) alike."""

from etils import epath

# The URL schemes etils.epath reads and writes (through fsspec or TensorFlow's gfile).
URL_SCHEMES = ("gs", "s3", "az", "hf")


def is_url(path: epath.PathLike) -> bool:
    """Whether ``path`` is a URL (``gs://bucket/run``) rather than a local path."""
    return str(path).startswith(tuple(f"{s}://" for s in URL_SCHEMES))


def as_path(path: epath.PathLike) -> epath.Path:
    """``path`` as an ``epath.Path``: a URL as it is, a local path made absolute (orbax needs
    absolute paths). Never ``os.path.abspath`` on a URL: that turns ``gs://b`` into ``./gs:/b``."""
    if is_url(path):
        return epath.Path(str(path))
    return epath.Path(path).expanduser().resolve()


def write_text(path: epath.Path, text: str) -> None:
    """Writes ``text`` to ``path`` whole; on a local disk through a temporary file and a rename,
    so a reader (or a crash) never sees half a file. Cloud objects appear whole by themselves."""
    if is_url(path):
        path.write_text(text)
        return
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
