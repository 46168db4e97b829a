"""``read_images``: image files decoded with Pillow into ndarrays, one row per file (Ray's reader).

Pillow is imported only when images are read or a read is set up, so that ``import ember.data`` does
not need it. Images of different shapes in one dataset give a variable-shaped tensor column
(``block.VariableShapeTensorType``); one shape gives a fixed-shape tensor column.
"""

import functools
import io

import numpy as np
import pyarrow as pa

from ember.data import block as blk
from ember.data.plan import Read
from ember.data.sources import BlockReadTask, ReadArgs, _bounds, _num_blocks, _partitions

# Ray's default for read_images: the formats Pillow reads that Ray looks for.
IMAGE_EXTENSIONS = ["png", "jpg", "jpeg", "tif", "tiff", "bmp", "gif"]

# Ray's read_images takes these too; Ember has no such options, so a call that sets one is refused
# rather than silently run differently from what it asked for.
_UNSUPPORTED = (
    "arrow_open_file_args",
    "partition_filter",
    "label_selector",
    "fallback_strategy",
    "max_calls",
    "resources",
    "accelerator_type",
    "runtime_env",
)


def _pillow():
    try:
        from PIL import Image
    except ImportError:
        raise ImportError("read_images needs Pillow to decode images: pip install Pillow") from None
    return Image


def check_size(size):
    """``size`` as a (height, width) tuple of positive ints, or None."""
    if size is None:
        return None
    if not isinstance(size, (tuple, list)) or len(size) != 2:
        raise ValueError(f"size must be a (height, width) pair of positive ints, got {size!r}.")
    for side in size:
        if not isinstance(side, (int, np.integer)) or isinstance(side, bool) or side <= 0:
            raise ValueError(f"size must be a (height, width) pair of positive ints, got {size!r}.")
    return int(size[0]), int(size[1])


def check_mode(mode, known_modes) -> str | None:
    """``mode`` if it is one of Pillow's modes (``known_modes``), or None."""
    if mode is None:
        return None
    if not isinstance(mode, str) or mode not in known_modes:
        raise ValueError(f"mode must be one of Pillow's image modes such as 'RGB' or 'L', got {mode!r}.")
    return mode


def check_extensions(file_extensions) -> list | None:
    """The extensions to keep, lower-cased and without a leading dot; None keeps every file."""
    if file_extensions is None:
        return None
    if isinstance(file_extensions, str) or not all(isinstance(e, str) for e in file_extensions):
        raise ValueError(f"file_extensions must be a list of strings or None, got {file_extensions!r}.")
    return [e.lower().lstrip(".") for e in file_extensions]


def has_extension(path: str, extensions) -> bool:
    name = path.rsplit("/", 1)[-1]
    return "." in name and name.rsplit(".", 1)[-1].lower() in extensions


# How many files read_images opens at the call to learn how much larger images are decoded than on
# disk (their headers only: Pillow reads the pixels when asked for them).
SAMPLED_FILES = 8


def _decoded_bytes(image_module, fs, path: str, size, mode) -> int | None:
    """The bytes ``path`` decodes to (after ``size`` and ``mode``), from its header; None if Pillow
    cannot read the header (the read will say why)."""
    try:
        with fs.open_input_file(path) as stream, image_module.open(stream) as image:
            width, height = image.size if size is None else (size[1], size[0])
            pixel = np.asarray(image_module.new(mode or image.mode, (1, 1))).nbytes
    except (OSError, ValueError, SyntaxError):
        return None
    return width * height * pixel


def estimate_in_memory(image_module, fs, files: list, size, mode) -> list:
    """Each file's bytes once decoded, from up to SAMPLED_FILES headers spread through ``files``: with
    ``size`` every image decodes alike; otherwise a file takes its size on disk times the sample's
    decoded bytes per byte on disk. A compressed image takes many times its file size in memory (a
    JPEG photo some ten times), and the read's blocks are sized by it: from file sizes alone, a
    block of a large dataset would hold gigabytes of pixels."""
    step = max(1, len(files) // SAMPLED_FILES)
    samples = []
    for path, nbytes in files[::step][:SAMPLED_FILES]:
        found = _decoded_bytes(image_module, fs, path, size, mode)
        if found is not None:
            samples.append((found, nbytes or 0))
    if size is not None:
        each = sum(d for d, _ in samples) // len(samples) if samples else size[0] * size[1] * 4
        return [max(1, each)] * len(files)
    on_disk = sum(n for _, n in samples)
    ratio = sum(d for d, _ in samples) / on_disk if on_disk else 1.0
    return [max(1, int((nbytes or 0) * ratio)) for _, nbytes in files]


def _decode(fs, path: str, size, mode) -> np.ndarray:
    image_module = _pillow()
    with fs.open_input_stream(path) as stream:
        data = stream.read()
    try:
        with image_module.open(io.BytesIO(data)) as image:
            if size is not None and image.size != (size[1], size[0]):
                image = image.resize((size[1], size[0]), resample=image_module.Resampling.BILINEAR)
            if mode is not None and image.mode != mode:
                image = image.convert(mode)
            return np.asarray(image)
    except (OSError, ValueError, SyntaxError) as error:
        # Pillow's errors name neither the file nor that it was an image being read.
        raise ValueError(f"Could not read the image {path}: {error}") from error


def known_image_type(image_module, size, mode):
    """The image column's type when every image comes out alike (resized to ``size`` and converted
    to ``mode``): a fixed-shape tensor of a blank image's shape and dtype. None otherwise."""
    if size is None or mode is None:
        return None
    blank = np.asarray(image_module.new(mode, (size[1], size[0])))
    return blk._array_of(blank[np.newaxis]).type


def _read_images(fs, paths, size, mode, include_paths, image_type, partitions, columns, limit) -> pa.Table:
    if limit is not None:
        paths = paths[:limit]  # one row per file
    out = {}
    if columns is None or "image" in columns:
        images = [_decode(fs, path, size, mode) for path in paths]
        if images:
            out["image"] = blk._array_of(images)
        elif image_type is not None:
            out["image"] = image_type.wrap_array(pa.array([], image_type.storage_type))
        else:
            out["image"] = pa.array([], pa.null())
    if include_paths:
        out["path"] = pa.array(paths, pa.string())
    for field in partitions[0] if partitions else ():  # a row per file: its directories' values
        values = [(partitions[1].get(path) or {}).get(field.name) for path in paths]
        out[field.name] = pa.array([None if v is None else v.as_py() for v in values], field.type)
    return pa.table(out)


def read_images(
    paths,
    *,
    filesystem=None,
    parallelism: int = -1,
    num_cpus=None,
    num_gpus=None,
    memory=None,
    arrow_open_file_args=None,
    partition_filter=None,
    partitioning=None,
    size=None,
    mode=None,
    include_paths: bool = False,
    ignore_missing_paths: bool = False,
    shuffle=None,
    file_extensions=IMAGE_EXTENSIONS,
    concurrency=None,
    override_num_blocks=None,
    label_selector=None,
    fallback_strategy=None,
    max_calls=None,
    resources=None,
    accelerator_type=None,
    runtime_env=None,
    ray_remote_args=None,
):
    """Read image files into a dataset with one row per image.

    The column ``"image"`` holds each image as a uint8 ndarray of shape (height, width, channels),
    or (height, width) for single-band modes such as ``"L"``; ``"path"`` holds its path when
    ``include_paths``. ``size=(height, width)`` resizes every image (bilinear), ``mode`` converts
    it to a Pillow mode (``"RGB"``, ``"L"``, ...). ``paths`` may be files, directories (read
    recursively), globs or a list of them; only files whose extension is in ``file_extensions``
    are read (None reads every file). ``shuffle="files"`` reads the files in a random order,
    ``ignore_missing_paths`` skips paths that do not exist; ``num_cpus``, ``num_gpus``, ``memory``,
    ``ray_remote_args`` and ``concurrency`` shape the read tasks (``sources.ReadArgs``).
    ``partitioning`` (a ``Partitioning``; none by default, as Ray) adds the values in the files'
    directories as columns. Ray's other placement options are refused.
    """
    from ember.data.dataset import Dataset

    for name in _UNSUPPORTED:
        value = locals()[name]
        if value is not None and value != {}:
            raise TypeError(f"read_images: {name}= is not supported by Ember (got {value!r}).")
    if not isinstance(include_paths, bool):
        raise TypeError("read_images: include_paths must be a bool.")
    given = {
        "parallelism": parallelism,
        "shuffle": shuffle,
        "ignore_missing_paths": ignore_missing_paths,
        "num_cpus": num_cpus,
        "num_gpus": num_gpus,
        "memory": memory,
        "ray_remote_args": ray_remote_args,
        "concurrency": concurrency,
    }
    read, _ = ReadArgs.take("read_images", given, (), override_num_blocks)
    size = check_size(size)
    image_module = _pillow()
    mode = check_mode(mode, image_module.MODES)
    extensions = check_extensions(file_extensions)

    fs, files = read.files(paths, filesystem, None)  # the extensions are matched here, files named directly too
    if extensions is not None:
        files = [(path, nbytes) for path, nbytes in files if has_extension(path, extensions)]
        if not files:
            # ValueError, as Ray raises: the files are there, the extensions rule them out.
            raise ValueError(
                f"No files with the extensions {extensions} at {paths!r}; pass file_extensions=None to read any file."
            )

    in_memory = estimate_in_memory(image_module, fs, files, size, mode)
    per_image = max(1, sum(in_memory) // len(files))
    bounds = _bounds(len(files), _num_blocks(len(files), per_image, read.override_num_blocks))
    partitions = _partitions(partitioning, filesystem, [path for path, _ in files], ["image", "path"])
    image_type = known_image_type(image_module, size, mode)
    schema = None
    if image_type is not None:
        fields = [("image", image_type)] + ([("path", pa.string())] if include_paths else [])
        schema = pa.schema(fields + (partitions[0] if partitions else []))
    tasks = [
        BlockReadTask(
            functools.partial(
                _read_images,
                fs,
                [path for path, _ in files[lo:hi]],
                size,
                mode,
                include_paths,
                image_type,
                None if partitions is None else (partitions[0], {p: partitions[1].get(p) for p, _ in files[lo:hi]}),
            ),
            num_rows=hi - lo,
            size_bytes=sum(in_memory[lo:hi]),
            schema=schema,
            input_files=[path for path, _ in files[lo:hi]],
        )
        for lo, hi in bounds
    ]
    return Dataset(Read("ReadImage", tasks, remote_args=read.remote_args, concurrency=read.concurrency))
