r"""Seconds until an MNIST-family dataset is in memory: decoding it, against its array cache.

    .venv/bin/python benchmarks/data_load.py                       # about 30 s on 2 cores
    .venv/bin/python benchmarks/data_load.py --idx_dir=/usr/share/datasets/fashion-mnist

What it measures, per source (``--datasets`` through TFDS in ``--data_dir``, and with
``--idx_dir`` Fashion-MNIST from its IDX files): the wall time of ``data.get_dataset(...)``
then ``arrays("train")`` and ``arrays("test")``, as a run starts, in a fresh dataset object
each time; ``decode`` with the cache bypassed (``data.read_source`` / ``data.read_idx_split``,
what every run did before the cache), ``cached`` through the cache file (written by the first
run; the script makes sure it exists). Median of ``--repeats``, the two interleaved. Both read
files the OS has in memory after the first repeat, as a second run would. The load average is
printed: the machine is shared.
"""

import argparse
import time

import _timing

from wtfree import array_cache, data


def load_time(make) -> float:
    start = time.perf_counter()
    ds = make()
    ds.arrays("train")
    ds.arrays("test")
    return time.perf_counter() - start


def bypassing_cache(make):
    """``make`` with array_cache.load calling the slow loader directly."""

    def run():
        original = array_cache.load
        array_cache.load = lambda path, slow, **kwargs: slow()
        try:
            return load_time(make)
        finally:
            array_cache.load = original

    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", default="mnist", help="TFDS datasets, comma-separated")
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--idx_dir", default=None, help="Fashion-MNIST IDX files")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"before: {_timing.load_average()}")
    sources = {}
    for name in filter(None, args.datasets.split(",")):
        sources[f"{name} (TFDS)"] = lambda n=name: data.get_dataset(n, data_dir=args.data_dir)
    if args.idx_dir:
        sources["fashion_mnist (IDX)"] = lambda: data.get_dataset(
            "fashion_mnist", idx_dir=args.idx_dir
        )
    runs = {}
    for label, make in sources.items():
        ds = make()
        ds.prepare()
        load_time(make)  # writes the cache if it is not there yet
        runs[f"{label} decode"] = bypassing_cache(make)
        runs[f"{label} cached"] = lambda make=make: load_time(make)
    times = _timing.interleaved(runs, args.repeats)
    rows = []
    for label in sources:
        slow, fast = times[f"{label} decode"], times[f"{label} cached"]
        rows.append(
            [
                label,
                f"{_timing.median(slow):.2f}",
                f"{_timing.median(fast):.2f}",
                f"{_timing.median(slow) / _timing.median(fast):.0f}x",
            ]
        )
    print()
    print(f"Seconds to get train and test in memory, median of {args.repeats}")
    print(_timing.table(["source", "decode s", "cached s", "speed-up"], rows))
    print(f"after: {_timing.load_average()}")


if __name__ == "__main__":
    main()
