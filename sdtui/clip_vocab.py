"""The real CLIP BPE vocabulary, rebuilt from the file the open-clip-torch wheel ships
(MIT licence, bundled as sdtui/engine/assets/bpe_simple_vocab_16e6.txt.gz). Pure Python, so the
UI can count tokens without torch."""

from __future__ import annotations

import gzip
import json
from functools import lru_cache
from pathlib import Path

BPE_FILE = Path(__file__).parent / "engine" / "assets" / "bpe_simple_vocab_16e6.txt.gz"
N_MERGES = 49152 - 256 - 2  # 48,894 merges, as CLIP uses
VOCAB_SIZE = 49408


def _bytes_to_unicode() -> dict[int, str]:
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


@lru_cache(maxsize=1)
def vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    lines = gzip.open(BPE_FILE, "rt", encoding="utf-8").read().split("\n")
    merges = lines[1 : N_MERGES + 1]
    symbols = list(_bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols]
    tokens += ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    assert len(tokens) == VOCAB_SIZE
    return {t: i for i, t in enumerate(tokens)}, merges


def write_tokenizer_files(folder: Path) -> None:
    """Write vocab.json and merges.txt (the files CLIPTokenizer reads) into ``folder``."""
    vocab, merges = vocab_and_merges()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8"
    )
