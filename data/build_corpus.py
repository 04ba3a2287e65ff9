"""Build the shipped demo corpus, data/corpus/demo.jsonl, from two Debian packages.

Needs the WordNet 3.0 database and the classical Chinese poems of fortunes-zh:

    apt-get install wordnet-base fortunes-zh
    python data/build_corpus.py

Sources written (sorted by source, then in file order):
  wordnet-example  the quoted example sentences of WordNet glosses
  wordnet-gloss    WordNet definitions of 6+ words, except those of proper-noun synsets
                   (all glosses would make the file ~25 MB, over its 20 MB budget)
  tang300          lines of the 300 Tang poems
  song100          lines of the 100 Song poems
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

WORDNET_DIR = Path("/usr/share/wordnet")
FORTUNES_DIR = Path("/usr/share/games/fortunes")
OUT = Path(__file__).resolve().parent / "corpus" / "demo.jsonl"
MAX_BYTES = 20_000_000
# All glosses would make the file ~25 MB; glosses are the less natural text, so only
# non-proper-noun glosses of this many words or more are kept (examples are all kept).
GLOSS_MIN_WORDS = 6

# wordnet-base ships no lexnames file, only its man page (lexnames.5WN); this is its table.
LEXNAMES = [
    "adj.all",
    "adj.pert",
    "adv.all",
    "noun.Tops",
    "noun.act",
    "noun.animal",
    "noun.artifact",
    "noun.attribute",
    "noun.body",
    "noun.cognition",
    "noun.communication",
    "noun.event",
    "noun.feeling",
    "noun.food",
    "noun.group",
    "noun.location",
    "noun.motive",
    "noun.object",
    "noun.person",
    "noun.phenomenon",
    "noun.plant",
    "noun.possession",
    "noun.process",
    "noun.quantity",
    "noun.relation",
    "noun.shape",
    "noun.state",
    "noun.substance",
    "noun.time",
    "verb.body",
    "verb.change",
    "verb.cognition",
    "verb.communication",
    "verb.competition",
    "verb.consumption",
    "verb.contact",
    "verb.creation",
    "verb.emotion",
    "verb.motion",
    "verb.perception",
    "verb.possession",
    "verb.social",
    "verb.stative",
    "verb.weather",
    "adj.ppl",
]
assert len(LEXNAMES) == 45

POS_FILES = (("n", "noun"), ("v", "verb"), ("a", "adj"), ("r", "adv"))
# An example is a double-quoted string that opens the gloss or follows a ";" or ":".
EXAMPLE_RE = re.compile(r'(?:^|[;:])\s*"([^"]*)"')
ANSI_RE = re.compile(r"\x1b\[[0-9;]*m")
# Poem lines end a sentence at these marks; used to cut over-long lines.
SENTENCE_END_RE = re.compile(r"(?<=[。！？；])")
HAN_RE = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")


def require(paths: list[Path], packages: str = "wordnet-base fortunes-zh") -> None:
    """Exit with a clear message when the Debian `packages` holding `paths` are not installed."""
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        sys.exit("missing source files: " + ", ".join(missing) + f"\ninstall them with: apt-get install {packages}")


def sense_numbers(index_file: Path) -> dict[tuple[str, str], int]:
    """Map (lemma, offset) to its 1-based sense number, as WordNet/NLTK number senses."""
    senses: dict[tuple[str, str], int] = {}
    for line in index_file.read_text(encoding="utf-8").splitlines():
        if line.startswith(" "):  # licence header lines start with two spaces
            continue
        f = line.split()
        p_cnt = int(f[3])
        synset_cnt = int(f[2])
        offsets = f[4 + p_cnt + 2 : 4 + p_cnt + 2 + synset_cnt]
        for i, off in enumerate(offsets, 1):
            senses[(f[0], off)] = i
    return senses


def wordnet_records() -> tuple[list[dict], list[dict]]:
    """Return (example records, gloss records) from the four WordNet data files."""
    examples, glosses = [], []
    for pos, name in POS_FILES:
        senses = sense_numbers(WORDNET_DIR / f"index.{name}")
        for line in (WORDNET_DIR / f"data.{name}").read_text(encoding="utf-8").splitlines():
            if line.startswith(" "):
                continue
            head, _, gloss = line.partition(" | ")
            f = head.split()
            offset, lexnum, ss_type = f[0], int(f[1]), f[2]
            # Adjective markers like "(p)" are not part of the lemma.
            lemma = re.sub(r"\(.*\)$", "", f[4]).lower()
            sense = senses.get((lemma, offset), 0)
            synset = f"{lemma}.{ss_type}.{sense:02d}" if sense else f"{offset}-{ss_type}"
            meta = {"synset": synset, "pos": pos, "lexname": LEXNAMES[lexnum]}
            gloss = gloss.strip()
            first = EXAMPLE_RE.search(gloss)
            definition = (gloss[: first.start()] if first else gloss).strip().rstrip(";").strip()
            # Proper-noun glosses (people, places, taxa: "United States poet (1809-1849)")
            # are skipped to fit 20 MB: they are the least natural text.
            if not (pos == "n" and f[4][0].isupper()):
                glosses.append({"text": definition, "source": "wordnet-gloss", **meta})
            for ex in EXAMPLE_RE.findall(gloss):
                examples.append({"text": ex, "source": "wordnet-example", **meta})
    return examples, glosses


def poem_records(source: str) -> list[dict]:
    """Split one fortunes file into one record per verse line, cutting lines over 40 chars."""
    text = ANSI_RE.sub("", (FORTUNES_DIR / source).read_text(encoding="utf-8"))
    records = []
    for poem in re.split(r"^%$", text, flags=re.MULTILINE):
        title = author = None
        for raw in poem.splitlines():
            line = raw.strip()
            if not line:
                continue
            if line.startswith(("题目", "《")) and "》" in line:
                title = line[line.index("《") + 1 : line.rindex("》")]
                continue
            if line.startswith("作者"):
                # Drop the full-width life dates, e.g. 柳开（９４６－９９９）.
                author = re.sub(r"（.*）", "", line[3:]).strip()
                continue
            parts = [line] if len(line) <= 40 else SENTENCE_END_RE.split(line)
            for part in parts:
                records.append({"text": part, "source": source, "title": title, "author": author})
    return records


def keep(rec: dict) -> bool:
    """Apply the length rules: 3+ words for examples, GLOSS_MIN_WORDS for glosses, 5-40 characters for Chinese."""
    text = rec["text"]
    if rec["source"] == "wordnet-gloss":
        return len(text.split()) >= GLOSS_MIN_WORDS
    if rec["source"] == "wordnet-example":
        return len(text.split()) >= 3
    return 5 <= len(text) <= 40 and HAN_RE.search(text) is not None


def main() -> None:
    """Write demo.jsonl and print its size and per-source counts."""
    require(
        [WORDNET_DIR / f"{k}.{n}" for _, n in POS_FILES for k in ("data", "index")]
        + [FORTUNES_DIR / "tang300", FORTUNES_DIR / "song100"]
    )
    examples, glosses = wordnet_records()
    groups = {
        "song100": poem_records("song100"),
        "tang300": poem_records("tang300"),
        "wordnet-example": examples,
        "wordnet-gloss": glosses,
    }
    seen: set[str] = set()
    counts: dict[str, int] = {}
    lines = []
    for source in sorted(groups):
        for rec in groups[source]:
            rec["text"] = " ".join(rec["text"].split())
            if rec["text"] in seen or not keep(rec):
                continue
            seen.add(rec["text"])
            rec = {k: v for k, v in rec.items() if v is not None}
            # Compact separators: with ~150k short records the spaces alone cost ~3 MB.
            lines.append(json.dumps(rec, ensure_ascii=False, separators=(",", ":")))
            counts[source] = counts.get(source, 0) + 1
    data = ("\n".join(lines) + "\n").encode("utf-8")
    if len(data) > MAX_BYTES:
        sys.exit(f"corpus is {len(data)} bytes, over the {MAX_BYTES} byte limit")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_bytes(data)
    print(f"wrote {OUT} ({len(data)} bytes, {len(lines)} lines)")
    for source, n in counts.items():
        print(f"  {source}: {n}")


if __name__ == "__main__":
    main()
