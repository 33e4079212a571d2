"""megatron-core's torch_dist checkpoint format, written by threads of the trainer itself: no process is spawned or
forked, so nothing a save starts can outlive a killed trainer.

megatron-core's synchronous save (TorchDistSaveShardedStrategy) forks one writer process per file and collects their
results through a queue served by a `multiprocessing.Manager`, a spawned server process (with its resource tracker)
that lives until the trainer exits normally. After a SIGKILL of the trainer it stayed alive for hours (300 MB RSS),
and a forked writer interrupted mid-save can block for ever on its result pipe. Here the same files are written by
the same function (`FileSystemWriterAsync.write_preloaded_data`), one thread per file, and the results travel through
an in-process queue. The files on disk are identical, and so is the load path.
"""
from __future__ import annotations

import queue
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from megatron.core.dist_checkpointing.strategies import filesystem_async
from megatron.core.dist_checkpointing.strategies.async_utils import AsyncRequest
from megatron.core.dist_checkpointing.strategies.filesystem_async import FileSystemWriterAsync
from megatron.core.dist_checkpointing.strategies.torch import TorchDistSaveShardedStrategy


class InProcessSaveStrategy(TorchDistSaveShardedStrategy):
    """Synchronous saves only (megafin never saves asynchronously): `thread_count` files per rank, as megatron's."""

    def __init__(self, thread_count: int = 2) -> None:
        super().__init__("torch_dist", 1, thread_count=thread_count)

    def async_save(self, sharded_state_dict: Any, checkpoint_dir: Any) -> AsyncRequest:
        # The writer asks megatron's module for its results queue, which the first time starts the Manager process.
        # A cached in-process queue is returned instead; each save then uses a fresh one of its own (below).
        if filesystem_async._results_queue is None:
            filesystem_async._results_queue = queue.Queue()
        return super().async_save(sharded_state_dict, checkpoint_dir)

    def _get_save_and_finalize_callbacks(self, writer: FileSystemWriterAsync, save_state_dict_ret: Any) -> AsyncRequest:
        request = super()._get_save_and_finalize_callbacks(writer, save_state_dict_ret)
        if request.async_fn is None:  # nothing to write on this rank
            return request
        writer.results_queue = queue.Queue()  # read back by writer.retrieve_write_results() in finalize
        transforms = [writer.transforms] if hasattr(writer, "transforms") else []

        def write_in_threads(rank: int, write_buckets: list, results_queue: "queue.Queue") -> None:
            results_queue.put(_write_buckets(transforms, write_buckets))

        rank, write_buckets, _ = request.async_fn_args
        return request._replace(async_fn=write_in_threads, async_fn_args=[rank, write_buckets, writer.results_queue])


def _write_buckets(transforms: list, write_buckets: list) -> Any:
    """One thread per file. Returns {bucket index: write results}, or the first worker's exception, which is what
    megatron's multi-process writer puts in its queue."""
    results: "queue.Queue" = queue.Queue()
    done: "queue.Queue" = queue.Queue()  # write_preloaded_data marks completion on it (get + task_done)
    with ThreadPoolExecutor(max_workers=max(1, len(write_buckets)), thread_name_prefix="megafin-ckpt") as pool:
        futures = []
        for i, bucket in enumerate(write_buckets):
            done.put(i)
            futures.append(pool.submit(FileSystemWriterAsync.write_preloaded_data, transforms, i, bucket, results,
                                       done, use_fsync=True))
    for future in futures:
        future.result()  # write errors come back as results; this raises only what escaped the writer itself
    collected: dict = {}
    while not results.empty():
        index, value = results.get()
        if isinstance(value, Exception):
            return value
        collected[index] = value
    return collected
