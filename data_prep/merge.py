"""`data_prep merge`: the N shards of `data_prep pretrain --shard i/N` -> one dataset, byte-identical to one run.

Shard i holds a contiguous run of the single run's documents (`data_prep.shards`), so the merge is a
concatenation: the .bin bytes copied in shard order, the .idx rebuilt from the shards' lengths, the stats summed
(`first_error_by_reason` from the first shard that has the reason: shards are in input order). Shards made with
--dedup also lose the documents an earlier shard already held (`data_prep.shard_dedup`). Refused, with one
line, before anything is written: a shard that is incomplete or not a shard, shards made with different inputs,
tokenizer (by content, not only by path) or settings, a shard given twice, and a shard missing.
In the merged PREFIX_stats.json only `seconds`, `docs_per_s`, `tokens_per_s` (summed over the shards' own runs),
`workers` (the shards') and `merged_from` differ from one run's; every other field is equal.
"""
from __future__ import annotations

import glob
import json
import os
import re
import sys
from collections import Counter

import numpy as np

from data_prep import outputs, shard_dedup
from data_prep.outputs import PRETRAIN_SUFFIX
from data_prep.stats import BadInputError, Stats
from data_prep.writers import BadIndexError, SequenceWriter, read_index

_SHARD_PATH = re.compile(r"^(?P<prefix>.*_shard\d+-of-\d+)(_text_document(\.bin|\.idx)?|_stats\.json)?$")
# What must be equal for shards to be parts of one run (the recorded `settings` hold the tokenizer's digest).
SAME = ("inputs", "tokenizer", "encoder", "dedup", "token_dtype", "vocab_size", "settings")


def find_shards(inputs: list[str]) -> list[str]:
    """Shard prefixes named by `inputs` (a shard's prefix or any of its files, or PREFIX for all its shards)."""
    out: list[str] = []
    for x in inputs:
        m = _SHARD_PATH.match(str(x))
        if m:
            found = [m.group("prefix")]
        else:
            found = sorted(p[: -len("_stats.json")] for p in glob.glob(glob.escape(str(x)) + "_shard*-of-*_stats.json"))
            if not found:
                raise BadInputError(f"{x}: no data_prep shard (expected PREFIX_shardI-of-N from `data_prep pretrain "
                                    "--shard I/N`, one of its files, or PREFIX with such shards beside it)")
        out += [p for p in found if p not in out]  # a shard's .bin, .idx and stats name it once
    return out


def _load(prefix: str) -> dict:
    path = f"{prefix}_stats.json"
    if not os.path.isfile(path):
        raise BadInputError(f"{path}: missing (expected the stats of a finished `data_prep pretrain --shard` run)")
    problem = outputs.check_complete(prefix + PRETRAIN_SUFFIX)
    if problem:
        raise BadInputError(problem)
    try:
        with open(path) as f:
            stats = json.load(f)
    except (OSError, ValueError) as e:
        raise BadInputError(f"{path}: unreadable ({e}); expected data_prep's stats JSON") from None
    if not isinstance(stats, dict) or not isinstance(stats.get("shard"), dict):
        raise BadInputError(f"{path}: not a shard's stats (no 'shard' entry; expected `data_prep pretrain --shard`)")
    return stats


def _first_difference(a: object, b: object, key: str) -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                return f"{key}.{k} {a.get(k)!r} vs {b.get(k)!r}"
    return f"{key} {a!r} vs {b!r}"


def check_shards(prefixes: list[str]) -> list[tuple[str, dict]]:
    """The shards in index order, or BadInputError naming what does not fit."""
    shards = [(p, _load(p)) for p in prefixes]
    (p0, s0) = shards[0]
    n = s0["shard"]["count"]
    by_index: dict[int, str] = {}
    for p, s in shards:
        if s["shard"]["count"] != n:
            raise BadInputError(f"{p}: shard {s['shard']['index']}/{s['shard']['count']} but {p0} is of {n} "
                                "(expected the shards of one `--shard i/N` split)")
        for key in SAME:
            if s.get(key) != s0.get(key):
                raise BadInputError(f"{p}: made with other settings than {p0} ({_first_difference(s.get(key), s0.get(key), key)}); "
                                    "expected shards of one data_prep pretrain run")
        i = s["shard"]["index"]
        if i in by_index:
            raise BadInputError(f"shard {i}/{n} given twice: {by_index[i]} and {p}")
        by_index[i] = p
    missing = [i for i in range(n) if i not in by_index]
    if missing:
        raise BadInputError(f"{len(missing)} of {n} shards missing (index {', '.join(map(str, missing[:10]))}"
                            f"{' ...' if len(missing) > 10 else ''}; given {', '.join(map(str, sorted(by_index)))}); "
                            "expected all shards of the run")
    return sorted(shards, key=lambda ps: ps[1]["shard"]["index"])


def _dedup_across_shards(shards: list[tuple[str, dict]]) -> tuple[list, shard_dedup.Replay]:
    """--dedup shards: one run's dedup replayed over them in order (`data_prep.shard_dedup`). -> (per shard, the
    mask of its written documents one run keeps; the Replay: its counts and first duplicate)."""
    replay = shard_dedup.Replay(strict=bool(shards[0][1]["shard"].get("strict")))
    keeps: list = []
    for p, s in shards:
        sources = s["shard"].get("dedup_sources")
        if not isinstance(sources, list):
            raise BadInputError(f"{p}_stats.json: a --dedup shard without 'dedup_sources' (made by an older "
                                "data_prep?); rerun this shard")
        rows = shard_dedup.load(p + PRETRAIN_SUFFIX + shard_dedup.SUFFIX, s["docs_written"],
                                s["skipped"].get(shard_dedup.DUPLICATE, 0), len(sources))
        keeps.append(replay.shard(rows, sources))
    return keeps, replay


def _add_kept(writer: SequenceWriter, bin_path: str, lengths: np.ndarray, keep: np.ndarray) -> None:
    """Append the documents of `bin_path` that `keep` marks, in runs of consecutive kept documents."""
    data = np.memmap(bin_path, dtype=writer.dtype, mode="r")
    offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
    kept = np.flatnonzero(keep)
    breaks = np.flatnonzero(np.diff(kept) != 1) + 1
    for run in np.split(kept, breaks):
        if run.size:
            writer.add_many(data[offsets[run[0]]: offsets[run[-1] + 1]], lengths[run])


def merge(inputs: list[str] | str, output_prefix: str, allow_empty: bool = False, quiet: bool = False) -> dict:
    """Join the shards into `{output_prefix}_text_document.bin/.idx` + `{output_prefix}_stats.json` (the stats
    dict is returned). Raises BadInputError for shards that cannot be joined, EmptyOutputError (unless
    allow_empty) when they hold no document, OutputError for an output location that cannot be written."""
    from data_prep.pretrain import TEXT_KEY_HINTS

    shards = check_shards(find_shards([inputs] if isinstance(inputs, str) else list(inputs)))
    s0 = shards[0][1]
    dtype = np.dtype(s0["token_dtype"])
    indexes = []
    for p, s in shards:
        idx = p + PRETRAIN_SUFFIX + ".idx"
        try:
            got_dtype, lengths = read_index(idx)
        except (OSError, BadIndexError) as e:
            raise BadInputError(str(e) if isinstance(e, BadIndexError) else f"{idx}: {e.strerror or e}") from None
        if got_dtype != dtype or lengths.size != s["docs_written"] or int(lengths.sum(dtype=np.int64)) != s["tokens"]:
            raise BadInputError(f"{idx}: {lengths.size:,} documents / {int(lengths.sum(dtype=np.int64)):,} tokens of "
                                f"{np.dtype(got_dtype).name}, but its stats record {s['docs_written']:,} / "
                                f"{s['tokens']:,} of {dtype.name}; rerun this shard")
        indexes.append(lengths)
    keeps, replay = _dedup_across_shards(shards) if s0["dedup"] else ([None] * len(shards), None)
    out = f"{output_prefix}{PRETRAIN_SUFFIX}"
    if any(os.path.abspath(out) == os.path.abspath(p + PRETRAIN_SUFFIX) for p, _ in shards):
        raise BadInputError(f"--output-prefix {output_prefix}: would overwrite a shard (expected another prefix)")
    outputs.check_output_prefix(output_prefix)

    stats = Stats(quiet=True)
    stats.docs_read = sum(s["docs_read"] for _, s in shards)
    stats.docs_written = sum(s["docs_written"] for _, s in shards)
    stats.tokens = sum(s["tokens"] for _, s in shards)
    stats.skipped = sum((Counter(s["skipped"]) for _, s in shards), Counter())
    for _, s in shards:  # in input order: the first shard with a reason holds its first occurrence
        for reason, line in s["first_error_by_reason"].items():
            stats.first_errors.setdefault(reason, line)
    if replay is not None:  # the shards' own repeats and those across shards, as one run counts them
        stats.docs_written -= int(sum((~keep).sum() for keep in keeps))
        stats.tokens -= int(sum(lengths[~keep].sum(dtype=np.int64) for keep, lengths in zip(keeps, indexes)))
        stats.skipped[shard_dedup.DUPLICATE] = replay.duplicates
        stats.skipped += Counter()  # drops a zero count
        stats.first_errors.pop(shard_dedup.DUPLICATE, None)
        if replay.first is not None:
            stats.first_errors[shard_dedup.DUPLICATE] = replay.first
    paths = [i["path"] for i in s0["inputs"]]
    if stats.docs_written == 0 and not allow_empty:
        raise stats.empty_output(paths, "documents", hints=TEXT_KEY_HINTS)

    writer = SequenceWriter(out, dtype)
    try:
        for (p, _), lengths, keep in zip(shards, indexes, keeps):
            if keep is None or keep.all():
                writer.add_file(p + PRETRAIN_SUFFIX + ".bin", lengths)
            else:
                _add_kept(writer, p + PRETRAIN_SUFFIX + ".bin", lengths, keep)
        files = writer.close()
        result = stats.to_dict(
            output=out, inputs=s0["inputs"], tokenizer=s0["tokenizer"], encoder=s0["encoder"],
            workers=s0["workers"] if len({s["workers"] for _, s in shards}) == 1 else [s["workers"] for _, s in shards],
            dedup=s0["dedup"], token_dtype=s0["token_dtype"], vocab_size=s0["vocab_size"], settings=s0["settings"],
        )
        secs = sum(s["seconds"] for _, s in shards)  # the shards' own runs, not this copy
        result.update(seconds=round(secs, 3), docs_per_s=round(stats.docs_read / secs, 1) if secs > 0 else None,
                      tokens_per_s=round(stats.tokens / secs, 1) if secs > 0 else None,
                      merged_from=[os.path.basename(p) for p, _ in shards])
        outputs.commit(out, files, f"{output_prefix}_stats.json", result)
    except BaseException:
        writer.abort()
        raise
    if not quiet:
        print(f"data_prep merge: {len(shards)} shards, {stats.docs_written:,}/{stats.docs_read:,} docs, "
              f"{stats.tokens:,} tokens -> {out}.bin/.idx", file=sys.stderr)
    return result
