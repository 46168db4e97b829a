"""read_images throughput: JPEGs of three sizes (so the image column is ragged) read and consumed as numpy
batches, as they are and resized, against Pillow decoding the same files in one process. ``--backend
ray`` runs the same reads on Ray (its venv needs Pillow importable).

    PYTHONPATH=$PWD python benchmarks/data_images.py [--images 2000] [--cpus 2] [--backend ember|ray]
"""

import argparse
import glob
import os
import tempfile
import time

import numpy as np

SHAPES = [(240, 320), (256, 256), (300, 200)]


def write_images(root: str, count: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(count):
        height, width = SHAPES[i % len(SHAPES)]
        # Smooth gradients plus a little noise: file sizes like photos', not like pure noise's.
        y, x = np.mgrid[0:height, 0:width]
        base = np.stack([x * 255 // width, y * 255 // height, (x + y) * 127 // (width + height)], axis=-1)
        pixels = np.clip(base + rng.integers(-8, 9, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(os.path.join(root, f"img{i:05d}.jpg"), quality=85)


def decode_serially(root: str) -> float:
    from PIL import Image

    start = time.perf_counter()
    for path in sorted(glob.glob(os.path.join(root, "*.jpg"))):
        with Image.open(path) as image:
            np.asarray(image)
    return time.perf_counter() - start


def consume(ds) -> tuple:
    start, rows, pixels = time.perf_counter(), 0, 0
    for batch in ds.iter_batches(batch_size=64, batch_format="numpy"):
        rows += len(batch["image"])
        pixels += sum(image.size for image in batch["image"])
    return time.perf_counter() - start, rows, pixels


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--backend", choices=["ember", "ray"], default="ember")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        write_images(root, args.images)
        total = sum(os.path.getsize(p) for p in glob.glob(os.path.join(root, "*.jpg")))
        print(f"{args.images} JPEGs, {total / 2**20:.1f} MiB on disk")
        took = decode_serially(root)
        print(f"Pillow, one process: {args.images / took:.0f} images/s")
        if args.backend == "ray":
            import ray

            ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
            read, shutdown = ray.data.read_images, ray.shutdown
        else:
            import ember
            from ember.data.images import read_images as read

            ember.init(num_cpus=args.cpus)
            shutdown = ember.shutdown
        try:
            for label, kwargs in [("as they are", {}), ("size=(224, 224)", {"size": (224, 224)})]:
                consume(read(root, **kwargs).limit(64))  # workers started, modules imported
                took, rows, pixels = consume(read(root, **kwargs))
                rate = f"{rows / took:.0f} images/s ({pixels / took / 1e6:.0f} Mpx/s)"
                print(f"{args.backend} read_images {label}: {rate}")
        finally:
            shutdown()


if __name__ == "__main__":
    main()
