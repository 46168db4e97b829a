"""read_images on the shared cluster: images the tests write with Pillow (PNG read back pixel for pixel,
JPEG by shape), resizing, mode conversion, paths, extension filtering, corrupt files, and images of
different shapes through every way a dataset hands out rows and batches."""

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pytest
from PIL import Image

import ember.data as rd
from ember.data import block as blk
from ember.data.images import read_images

RGB_SHAPES = [(4, 5, 3), (6, 7, 3), (9, 3, 3)]


def _pixels(shape, seed):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


@pytest.fixture
def image_dir(tmp_path):
    """Three RGB PNGs of different sizes, a grayscale PNG in a subdirectory, a JPEG and a text file;
    returns (root, {file name: pixels written})."""
    root = tmp_path / "imgs"
    (root / "gray").mkdir(parents=True)
    written = {}
    for i, shape in enumerate(RGB_SHAPES):
        written[f"rgb{i}.png"] = _pixels(shape, i)
        Image.fromarray(written[f"rgb{i}.png"]).save(root / f"rgb{i}.png")
    written["gray/g.png"] = _pixels((5, 8), 10)
    Image.fromarray(written["gray/g.png"]).save(root / "gray" / "g.png")
    Image.fromarray(_pixels((16, 12, 3), 11)).save(root / "photo.JPG", quality=90)
    (root / "notes.txt").write_text("not an image")
    return root, written


def _by_name(rows, root):
    return {r["path"][len(str(root)) + 1 :]: r["image"] for r in rows}


def test_png_pixels_exact_and_jpeg_shape(cluster, image_dir):
    root, written = image_dir
    rows = read_images(str(root), include_paths=True).take_all()
    images = _by_name(rows, root)
    assert sorted(images) == sorted([*written, "photo.JPG"])  # the .txt file is not read
    for name, pixels in written.items():
        assert images[name].dtype == np.uint8
        np.testing.assert_array_equal(images[name], pixels)
    assert images["photo.JPG"].shape == (16, 12, 3)
    assert images["photo.JPG"].dtype == np.uint8


def test_count_from_metadata_and_columns(cluster, image_dir):
    root, _ = image_dir
    ds = read_images(str(root))
    assert ds.count() == 5
    assert ds.columns() == ["image"]
    assert read_images(str(root), include_paths=True).columns() == ["image", "path"]


def test_size_resizes_every_image(cluster, image_dir):
    root, _ = image_dir
    batch = read_images(str(root), size=(3, 4), mode="RGB").take_batch(10)
    # One shape throughout: the batch is one (rows, height, width, channels) array.
    assert batch["image"].shape == (5, 3, 4, 3)
    assert batch["image"].dtype == np.uint8


def test_size_keeps_an_image_already_that_size(cluster, tmp_path):
    pixels = _pixels((4, 6, 3), 3)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    [row] = read_images(str(tmp_path / "a.png"), size=(4, 6)).take_all()
    np.testing.assert_array_equal(row["image"], pixels)


def test_mode_converts(cluster, image_dir):
    root, written = image_dir
    rows = read_images(str(root), mode="L", include_paths=True).take_all()
    images = _by_name(rows, root)
    for name, pixels in written.items():
        expected = np.asarray(Image.fromarray(pixels).convert("L"))
        np.testing.assert_array_equal(images[name], expected)
    assert images["photo.JPG"].shape == (16, 12)
    rgb = _by_name(read_images(str(root / "gray"), mode="RGB", include_paths=True).take_all(), root)
    assert rgb["gray/g.png"].shape == (5, 8, 3)
    np.testing.assert_array_equal(rgb["gray/g.png"][..., 1], written["gray/g.png"])


def test_paths_globs_and_lists(cluster, image_dir):
    root, _ = image_dir
    assert read_images(str(root / "rgb*.png")).count() == 3
    assert read_images([str(root / "rgb0.png"), str(root / "gray")]).count() == 2
    rows = read_images(str(root / "gray" / "g.png"), include_paths=True).take_all()
    assert [r["path"] for r in rows] == [str(root / "gray" / "g.png")]
    assert read_images([str(root / "rgb0.png"), str(root / "missing.png")], ignore_missing_paths=True).count() == 1
    with pytest.raises(FileNotFoundError):
        read_images([str(root / "rgb0.png"), str(root / "missing.png")])


def test_file_extensions(cluster, image_dir):
    root, _ = image_dir
    assert read_images(str(root), file_extensions=["png"]).count() == 4
    # Matched without regard to case or a leading dot, as Ray does.
    assert read_images(str(root), file_extensions=[".jpg"]).count() == 1
    assert read_images(str(root), file_extensions=["PNG"]).count() == 4
    # The filter applies to files named outright as well as to directories' contents.
    with pytest.raises(ValueError, match="file_extensions"):
        read_images(str(root / "notes.txt"))
    with pytest.raises(ValueError, match="Could not read the image .*notes.txt"):
        read_images(str(root / "notes.txt"), file_extensions=None).take_all()


def test_corrupt_image_names_the_file(cluster, image_dir):
    root, _ = image_dir
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n but nothing after the signature")
    with pytest.raises(ValueError, match=r"Could not read the image .*broken\.png"):
        read_images(str(root)).take_all()
    # A truncated file that Pillow identifies but cannot decode.
    good = (root / "rgb1.png").read_bytes()
    (root / "broken.png").write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match=r"Could not read the image .*broken\.png"):
        read_images(str(root / "broken.png")).take_all()


def test_ragged_shapes_through_rows_and_batches(cluster, image_dir):
    root, written = image_dir
    ds = read_images(str(root), file_extensions=["png"], include_paths=True, override_num_blocks=2)
    expected = {str(root / name): pixels for name, pixels in written.items()}

    for row in ds.take(10):
        assert isinstance(row["image"], np.ndarray)
        np.testing.assert_array_equal(row["image"], expected[row["path"]])
    for row in ds.iter_rows():
        np.testing.assert_array_equal(row["image"], expected[row["path"]])

    seen = 0
    for batch in ds.iter_batches(batch_size=3, batch_format="numpy"):
        images = batch["image"]
        assert isinstance(images, np.ndarray) and images.dtype == object and images.ndim == 1
        for image, path in zip(images, batch["path"]):
            assert isinstance(image, np.ndarray)
            np.testing.assert_array_equal(image, expected[path])
            seen += 1
    assert seen == 4

    frame = ds.to_pandas()
    for image, path in zip(frame["image"], frame["path"]):
        np.testing.assert_array_equal(image, expected[path])


def test_ragged_shapes_through_map_batches(cluster, image_dir):
    root, written = image_dir
    ds = read_images(str(root), file_extensions=["png"], include_paths=True, override_num_blocks=1)

    def shapes(batch):
        assert batch["image"].dtype == object
        return {"path": batch["path"], "dims": np.array([len(image.shape) for image in batch["image"]])}

    dims = {r["path"]: r["dims"] for r in ds.map_batches(shapes, batch_size=None).take_all()}
    assert dims == {str(root / name): pixels.ndim for name, pixels in written.items()}

    def invert(batch):
        for image in batch["image"]:
            image[...] = 255 - image  # in place: without zero_copy_batch the arrays are the function's own
        return batch

    rows = ds.map_batches(invert, batch_size=2, zero_copy_batch=False).take_all()
    for row in rows:
        np.testing.assert_array_equal(row["image"], 255 - written[row["path"][len(str(root)) + 1 :]])


def test_select_path_only_does_not_decode(cluster, image_dir):
    root, _ = image_dir
    (root / "broken.png").write_bytes(b"garbage")
    paths = sorted(r["path"] for r in read_images(str(root), include_paths=True).select_columns(["path"]).take_all())
    assert len(paths) == 6 and paths[0].endswith("broken.png")


def test_arguments_refused_at_the_call(cluster, image_dir):
    root, _ = image_dir
    with pytest.raises(ValueError, match="size"):
        read_images(str(root), size=(3,))
    with pytest.raises(ValueError, match="size"):
        read_images(str(root), size=(0, 4))
    with pytest.raises(ValueError, match="mode"):
        read_images(str(root), mode="NOPE")
    with pytest.raises(TypeError, match="label_selector"):
        read_images(str(root), label_selector={"zone": "a"})
    with pytest.raises(TypeError, match="nope"):
        read_images(str(root), nope=1)
    # Ray's task options shape the read tasks.
    assert len(read_images(str(root), num_cpus=0.5, concurrency=1, ray_remote_args={"max_retries": 1}).take_all()) == 5
    with pytest.raises(TypeError, match="partitioning"):
        read_images(str(root), partitioning=object())
    with pytest.raises(ValueError, match="shuffle"):
        read_images(str(root), shuffle="rows")
    with pytest.raises(ValueError, match="override_num_blocks"):
        read_images(str(root), override_num_blocks=0)
    with pytest.raises(FileNotFoundError):
        read_images(str(root / "nothing-here"))


def test_shuffle_files_reads_every_file(cluster, image_dir):
    root, _ = image_dir
    shuffled = read_images(str(root), shuffle="files", include_paths=True).take_all()
    plain = read_images(str(root), include_paths=True).take_all()
    assert sorted(r["path"] for r in shuffled) == sorted(r["path"] for r in plain)


def test_variable_tensor_blocks_without_a_cluster():
    """The block conversions alone: ragged arrays, a tensor column per shape joined into one."""
    arrays = [_pixels((2, 3, 3), 0), _pixels((4, 1), 1), _pixels((1, 1, 3), 2)]
    table = blk.from_batch({"image": arrays})
    assert isinstance(table.column("image").type, blk.VariableShapeTensorType)
    back = blk.to_batch(table, "numpy")["image"]
    assert back.dtype == object
    for got, want in zip(back, arrays):
        np.testing.assert_array_equal(got, want)
    # An object array of ndarrays (what a user function got) becomes the same column again.
    assert blk.from_batch({"image": back}).equals(table)
    # Blocks whose tensor columns have different fixed shapes concatenate as one ragged column.
    first = blk.from_batch({"image": np.stack([arrays[0], arrays[0]])})
    joined = blk.concat([first.slice(1), table, blk.from_batch({"image": [arrays[1]]})])
    got = blk.column_to_numpy(joined.column("image"))
    for image, want in zip(got, [arrays[0], *arrays, arrays[1]]):
        np.testing.assert_array_equal(image, want)
    assert [r["image"].shape for r in joined.to_pylist()] == [a.shape for a in [arrays[0], *arrays, arrays[1]]]
    # A slice of the column gives its own rows; without zero copy they may be changed in place and
    # the block stays as it was.
    for copy_free in (True, False):
        middle = blk.column_to_numpy(table.slice(1, 2).column("image"), zero_copy=copy_free)
        for got, want in zip(middle, arrays[1:], strict=True):
            np.testing.assert_array_equal(got, want)
    middle[0][...] = 0
    np.testing.assert_array_equal(blk.column_to_numpy(table.column("image"))[1], arrays[1])
    # Ragged 1-D arrays stay Arrow lists, as before.
    assert pa.types.is_list(blk.from_batch({"x": [np.arange(3), np.arange(2)]}).column("x").type)


def test_schema_known_without_reading_when_size_and_mode_given(cluster, image_dir):
    root, _ = image_dir
    (root / "broken.png").write_bytes(b"garbage")  # would fail the read if schema() ran one
    ds = read_images(str(root), size=(3, 4), mode="RGB", include_paths=True)
    assert ds.schema().names == ["image", "path"]
    assert ds.schema().types[0].shape == [3, 4, 3]
    assert read_images(str(root), size=(3, 4), mode="F").schema().types[0].value_type == pa.float32()
    assert ds.count() == 6


def test_length_one_axes_keep_their_layout_without_a_cluster():
    # numpy gives an axis of length 1 any stride; the tensor column must not take it for a permutation.
    tall = np.arange(15.0).reshape(5, 3)[:, np.newaxis, :]
    table = blk.from_batch({"x": tall})
    assert table.column("x").type.shape == [1, 3]
    np.testing.assert_array_equal(blk.column_to_numpy(table.column("x")), tall)
    single = np.arange(12).reshape(3, 4)[np.newaxis]
    np.testing.assert_array_equal(blk.column_to_numpy(blk.from_batch({"x": single}).column("x")), single)


@pytest.fixture
def data_context():
    ctx = rd.DataContext.get_current()
    saved = (ctx.target_max_block_size, ctx.read_op_min_num_blocks)
    yield ctx
    ctx.target_max_block_size, ctx.read_op_min_num_blocks = saved


def test_blocks_sized_by_decoded_bytes_not_file_sizes(cluster, tmp_path, data_context):
    for i in range(12):
        # Flat images: PNGs of a hundred bytes that decode to 3 KiB each.
        Image.fromarray(np.full((32, 32, 3), i, np.uint8)).save(tmp_path / f"flat{i:02d}.png")
    assert max(p.stat().st_size for p in tmp_path.iterdir()) < 32 * 32 * 3 // 10
    data_context.read_op_min_num_blocks = 1
    data_context.target_max_block_size = 7 * 32 * 32 * 3 // 2  # three and a half decoded images
    ds = read_images(str(tmp_path)).materialize()
    assert ds.num_blocks() == 4
    assert [int(r["image"][0, 0, 0]) for r in ds.take_all()] == list(range(12))
    # Resized, every image decodes alike: 8 x 8 x 3 bytes, so a block of the same cap holds 48.
    data_context.target_max_block_size = 48 * 8 * 8 * 3
    assert read_images(str(tmp_path), size=(8, 8), mode="RGB").materialize().num_blocks() == 1
    data_context.target_max_block_size = 4 * 8 * 8 * 3
    assert read_images(str(tmp_path), size=(8, 8), mode="RGB").materialize().num_blocks() == 3


def test_a_given_filesystem(cluster, image_dir):
    root, written = image_dir
    fs = pafs.SubTreeFileSystem(str(root), pafs.LocalFileSystem())
    rows = read_images("gray", filesystem=fs, include_paths=True).take_all()
    assert [r["path"] for r in rows] == ["gray/g.png"]
    np.testing.assert_array_equal(rows[0]["image"], written["gray/g.png"])
    assert read_images(["rgb0.png", "rgb1.png"], filesystem=fs).count() == 2


def test_pandas_batches_hold_one_ndarray_per_image(cluster, image_dir):
    root, written = image_dir
    expected = {str(root / name): pixels for name, pixels in written.items()}
    ragged = read_images(str(root), file_extensions=["png"], include_paths=True)

    def brighten(frame):
        for image in frame["image"]:
            assert isinstance(image, np.ndarray) and image.ndim >= 2
        frame["image"] = [np.minimum(image, 254) + 1 for image in frame["image"]]
        return frame

    for row in ragged.map_batches(brighten, batch_format="pandas", batch_size=3).take_all():
        np.testing.assert_array_equal(row["image"], np.minimum(expected[row["path"]], 254) + 1)

    # Resized, every image has one shape: each cell is still an image, not Arrow's flattened list.
    resized = read_images(str(root), size=(3, 4), mode="RGB")
    frame = next(iter(resized.iter_batches(batch_size=5, batch_format="pandas")))
    assert [cell.shape for cell in frame["image"]] == [(3, 4, 3)] * 5
    assert resized.map_batches(lambda f: f, batch_format="pandas").take_batch(5)["image"].shape == (5, 3, 4, 3)


def test_ragged_images_written_to_parquet_read_back(cluster, image_dir, tmp_path):
    # One image a block, so each file carries its own fixed tensor shape: read_parquet takes them as
    # one variable-shaped column, as it would the blocks themselves.
    root, written = image_dir
    ds = read_images(str(root), file_extensions=["png"], include_paths=True, override_num_blocks=4)
    ds.write_parquet(str(tmp_path / "out"))
    back = rd.read_parquet(str(tmp_path / "out"))
    assert isinstance(back.schema().base_schema.field("image").type, blk.VariableShapeTensorType)
    rows = back.take_all()
    assert sorted(r["path"] for r in rows) == sorted(str(root / name) for name in written)
    for row in rows:
        np.testing.assert_array_equal(row["image"], written[row["path"][len(str(root)) + 1 :]])
    # Tensors of another dtype are still a mismatch, not a silent cast.
    fixed = blk.from_batch({"image": np.zeros((1, 2, 2), np.uint8), "path": ["a"]}).schema
    other = blk.from_batch({"image": np.zeros((1, 3, 3), np.float32), "path": ["b"]}).schema
    assert blk.unify_schemas(fixed, other) is None
    assert blk.unify_schemas(fixed, fixed) is fixed


def test_write_images_round_trips_through_read_images(cluster, image_dir, tmp_path):
    root, written = image_dir
    ds = read_images(str(root), file_extensions=["png"], include_paths=True, override_num_blocks=2)
    out = tmp_path / "written"
    ds.write_images(str(out), column="image")  # PNG by default: lossless
    files = sorted(out.iterdir())
    assert len(files) == len(written) and all(f.suffix == ".png" for f in files)
    got = sorted(r["image"].tobytes() for r in read_images(str(out)).take_all())
    assert got == sorted(pixels.tobytes() for pixels in written.values())
    ds.filter(lambda r: r["image"].ndim == 3).write_images(str(tmp_path / "jpegs"), "image", "jpg")
    jpegs = read_images(str(tmp_path / "jpegs")).take_all()
    assert sorted(r["image"].shape for r in jpegs) == sorted(p.shape for p in written.values() if p.ndim == 3)

    with pytest.raises(ValueError, match="Pillow cannot write 'nope'"):
        ds.write_images(str(tmp_path / "refused"), "image", "nope")
    assert not (tmp_path / "refused").exists()
    # read_images' schema is known only once a file is read: a missing column fails in the tasks.
    with pytest.raises(ValueError, match="no column 'pixels'"):
        ds.write_images(str(tmp_path / "refused"), "pixels")
    assert not list((tmp_path / "refused").iterdir())


def test_labels_from_hive_directories(cluster, tmp_path):
    from ember.data.datasource import Partitioning

    for label, seed in (("cat", 0), ("dog", 1), ("dog", 2)):
        (tmp_path / "pets" / f"label={label}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(_pixels((4, 4, 3), seed)).save(tmp_path / "pets" / f"label={label}" / f"{seed}.png")
    ds = read_images(str(tmp_path / "pets"), partitioning=Partitioning("hive"), include_paths=True)
    assert ds.columns() == ["image", "path", "label"]
    rows = ds.take_all()
    assert sorted((r["path"].rsplit("/", 1)[-1], r["label"]) for r in rows) == [
        ("0.png", "cat"),
        ("1.png", "dog"),
        ("2.png", "dog"),
    ]
    assert sorted(r["label"] for r in ds.select_columns(["label"]).take_all()) == ["cat", "dog", "dog"]
    assert read_images(str(tmp_path / "pets")).columns() == ["image"]  # none unless asked, as Ray
