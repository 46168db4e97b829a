"""The CPU floor of moving decoded Parquet through a shared-memory store, against decoding alone.

benchmarks/data.py compares ember.data with a one-process pyarrow loop. On a row whose consumer is
another process (read -> iter_batches in the driver), every decoded byte must reach shared memory
once, whatever the runtime: this script measures that cost on this machine, with no runtime at all,
over the same generated files (``benchmarks/data.py`` makes them; ``--files`` of its 32):

- decode: ``read_row_groups`` of a whole file, one thread (what the loop and a read task both do);
- decode + store write: the same, then each buffer ``pwrite``-n into a fresh ``/dev/shm`` file (what a
  worker does with a block today);
- decode + store write, reused pages: into a file whose pages an earlier object already faulted in;
- streamed: batches of 65,536 rows decoded and written while they are still in cache;
- reader faults: mapping those files read-only and touching every page (what the consumer pays).

Each line gives CPU seconds scaled to all 32 files, so they add up against benchmarks/data.py's rows.

``--split`` measures instead what splitting the actor_pool row's loop work (read a row group, apply
benchmarks/data.py's ``Model``, sum) over two processes costs, with no runtime: one process doing
all 32 files, then two processes doing half each at once, then the same two halves one after the
other (each process one thread, as the loop).

    PYTHONPATH=$PWD /work/venv/bin/python benchmarks/data_floor.py --files 8
    PYTHONPATH=$PWD /work/venv/bin/python benchmarks/data_floor.py --split
"""

import argparse
import contextlib
import glob
import mmap
import os
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq

DATA = "/tmp/ember-data-bench/scale-1"
STREAM_ROWS = 65536


def _write_buffers(fd: int, arrays, offset: int) -> int:
    for array in arrays:
        for buffer in array.buffers():
            if buffer is not None:
                os.pwrite(fd, buffer, offset)
                offset += buffer.size
    return offset


def _decoded(path: str):
    """A whole file's row groups as one table, one thread: what the loop and a read task both do."""
    source = pq.ParquetFile(pa.memory_map(path))
    return source.read_row_groups(range(source.num_row_groups), use_threads=False)


def _chunks(table):
    return (chunk for column in table.columns for chunk in column.chunks)


@contextlib.contextmanager
def _fresh_file(path: str):
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    try:
        yield fd
    finally:
        os.close(fd)
        os.unlink(path)


def decode(files, shm):
    for path in files:
        _decoded(path)


def decode_and_write(files, shm):
    for i, path in enumerate(files):
        table = _decoded(path)
        with _fresh_file(f"{shm}-{i}") as fd:
            _write_buffers(fd, _chunks(table), 0)


def decode_and_write_reused(files, shm):
    with _fresh_file(f"{shm}-reused") as fd:
        for path in files:
            _write_buffers(fd, _chunks(_decoded(path)), 0)


def streamed(files, shm):
    for i, path in enumerate(files):
        with _fresh_file(f"{shm}-{i}") as fd:
            offset = 0
            for batch in pq.ParquetFile(pa.memory_map(path)).iter_batches(batch_size=STREAM_ROWS, use_threads=False):
                offset = _write_buffers(fd, batch.columns, offset)


def reader_faults(files, shm):
    page = mmap.PAGESIZE
    for i, path in enumerate(files):
        table = _decoded(path)
        with _fresh_file(f"{shm}-{i}") as fd:
            size = _write_buffers(fd, _chunks(table), 0)
            started = time.process_time()
            mapping = mmap.mmap(fd, size, prot=mmap.PROT_READ)
            view = memoryview(mapping)
            total = 0
            for offset in range(0, size, page):
                total += view[offset]
            view.release()
            mapping.close()
            reader_faults.cpu += time.process_time() - started


def model_part(files, part: int, parts: int) -> None:
    """The actor_pool row's loop over every ``parts``-th file from ``part``; prints its CPU seconds."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from data import Model, consume

    model, started = Model(), time.process_time()
    for path in files[part::parts]:
        source = pq.ParquetFile(path)
        for group in range(source.num_row_groups):
            table = source.read_row_group(group, use_threads=False)
            consume(model({n: table.column(n).to_numpy() for n in table.column_names}), "pred")
    print(f"{time.process_time() - started:.3f}", flush=True)


def split(data: str) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")

    def run(parts: list) -> tuple:
        started = time.perf_counter()
        procs = [
            subprocess.Popen(
                [sys.executable, __file__, "--data", data, "--model-part", f"{k}/{n}"],
                stdout=subprocess.PIPE,
                text=True,
                env=env,
            )
            for k, n in parts
        ]
        cpu = [float(p.communicate()[0]) for p in procs]
        return cpu, time.perf_counter() - started

    run([(0, 1)])  # the files into the page cache
    cpu, wall = run([(0, 1)])
    print(f"  one process, all files          {cpu[0]:5.2f} CPU-s, {wall:5.2f} s wall")
    cpu, wall = run([(0, 2), (1, 2)])
    print(f"  two processes at once, half each {sum(cpu):5.2f} CPU-s ({cpu[0]:.2f} + {cpu[1]:.2f}), {wall:5.2f} s wall")
    first, wall_first = run([(0, 2)])
    second, wall_second = run([(1, 2)])
    print(
        f"  the two halves one after another {first[0] + second[0]:5.2f} CPU-s ({first[0]:.2f} + {second[0]:.2f}), "
        f"{wall_first + wall_second:5.2f} s wall"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=DATA, help="a folder of benchmarks/data.py's Parquet files")
    parser.add_argument("--files", type=int, default=8, help="how many of its files to use")
    parser.add_argument("--split", action="store_true", help="the cost of splitting the actor row over 2 processes")
    parser.add_argument("--model-part", help=argparse.SUPPRESS)
    args = parser.parse_args()
    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)
    everything = sorted(glob.glob(os.path.join(args.data, "*.parquet")))
    if not everything:
        raise SystemExit(f"no Parquet files in {args.data}: run benchmarks/data.py once to make them")
    if args.model_part:
        part, parts = map(int, args.model_part.split("/"))
        return model_part(everything, part, parts)
    if args.split:
        return split(args.data)
    files = everything[: args.files]
    scale = len(everything) / len(files)
    shm = f"/dev/shm/ember-floor-{os.getpid()}"
    decode(files, shm)  # the files into the page cache, pyarrow's pools warm
    print(f"{len(files)} of {len(everything)} files; CPU seconds scaled to all {len(everything)}")
    for step in (decode, decode_and_write, decode_and_write_reused, streamed):
        started = time.process_time()
        step(files, shm)
        print(f"  {step.__name__:26s} {(time.process_time() - started) * scale:6.2f} CPU-s")
    reader_faults.cpu = 0.0
    reader_faults(files, shm)
    print(f"  {'reader_faults':26s} {reader_faults.cpu * scale:6.2f} CPU-s")


if __name__ == "__main__":
    main()
