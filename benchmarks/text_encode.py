"""What a text experiment's start-up costs, cold and warm: building the word-level vocabulary and encoding a split,
against reading both back from the cache (`text.word_level_tokenizer`'s vocab file, `text.tokenise`'s entry).

The corpus is the generated topic corpus repeated to --rows rows (a pool the size of MNLI's is ~390k pairs).
Every step runs --repeats times in one process, cold (cache folder emptied) and warm in turn; printed: median
seconds of each and the cold/warm ratio.

    python benchmarks/text_encode.py [--rows 320000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from mixcd_cli.text import TextSource, content_fingerprint, make_encoder, make_topic_text, tokenise


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=320_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    base = make_topic_text(train=True)
    times = -(-args.rows // len(base))
    rows = (base.texts * times)[:args.rows]
    targets = base.targets.repeat(times)[:args.rows]
    source = TextSource(rows, targets, "bench", content_fingerprint(rows, targets))
    make_encoder(None, None, 64, None, lambda: rows[:10])  # imports transformers once, outside the timings
    runs: dict[str, list[float]] = {"vocabulary cold": [], "vocabulary warm": [], "encode cold": [],
                                    "encode warm": []}
    folder = Path(tempfile.mkdtemp(prefix="mixcd-text-bench-"))
    try:
        for _ in range(args.repeats):
            shutil.rmtree(folder, ignore_errors=True)
            for state in ("cold", "warm"):
                t0 = time.perf_counter()
                encoder = make_encoder(None, None, 64, None, lambda: rows, vocab_file=folder / "vocab.json")
                runs[f"vocabulary {state}"].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                tokens, cached = tokenise(source, encoder, folder)
                runs[f"encode {state}"].append(time.perf_counter() - t0)
                assert cached == (state == "warm") and isinstance(tokens.ids, torch.Tensor)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    median = {k: statistics.median(v) for k, v in runs.items()}
    print(f"{args.rows:,} rows, {args.repeats} repeats (median seconds)")
    for step in ("vocabulary", "encode"):
        cold, warm = median[f"{step} cold"], median[f"{step} warm"]
        print(f"  {step:<10}  cold {cold:7.3f}  warm {warm:7.3f}  cold/warm {cold / warm:6.1f}x")


if __name__ == "__main__":
    main()
