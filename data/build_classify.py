"""Build the shipped classification datasets of data/classify/ from two Debian packages.

`toklabel probe` trains classifiers over pooled SAE features of labeled texts; these two datasets let it
run offline. Both are Parquet files with the columns `text` and `label` (strings).

  wordnet_glosses.parquet  WordNet 3.0 definitions (glosses) labeled with their synset's lexicographer
                           category: 8 noun categories, PER_CATEGORY seeded glosses of each (balanced)
  fortunes.parquet         fortune-cookie texts labeled with the topic of the fortune file they come from
                           (art, computers, education, food, law, love, medicine, politics, science,
                           sports); at most PER_TOPIC per topic (seeded), so no topic dwarfs the others

and accept.json: per dataset, per class, the labels that name the class (its name, synonyms and
near-synonyms, never its members: "animals" names noun.animal, "dog" does not). WordNet categories take
the evaluation set's accept lists (data/build_eval.py).

    apt-get install wordnet-base fortunes   # Debian 12: 1:3.0-37 and 1:1.99.1-7.3
    python data/build_classify.py

Deterministic: the same packages give the same files.
"""

from __future__ import annotations

import json
import random
import re
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # workers/ from a plain `python data/...`
from build_corpus import FORTUNES_DIR, POS_FILES, WORDNET_DIR, require, wordnet_records  # noqa: E402
from build_eval import ACCEPT  # noqa: E402

OUT = Path(__file__).resolve().parent / "classify"
SEED = 0
SCHEMA = pa.schema([("text", pa.string()), ("label", pa.string())])

CATEGORIES = (
    "noun.animal",
    "noun.artifact",
    "noun.body",
    "noun.communication",
    "noun.food",
    "noun.person",
    "noun.plant",
    "noun.substance",
)
PER_CATEGORY = 500
GLOSS_WORDS = (4, 40)  # a gloss of fewer words says too little; longer ones are rare run-on lists

# Labels that name each fortune topic: its name, synonyms and near-synonyms (never a member of it).
TOPICS = {
    "art": ["art", "arts", "artist", "artists", "artistic", "artwork", "artworks", "aesthetic", "aesthetics"],
    "computers": [
        "computer",
        "computers",
        "computing",
        "computation",
        "computational",
        "software",
        "hardware",
        "programming",
        "programmer",
        "programmers",
        "coding",
    ],
    "education": [
        "education",
        "educational",
        "school",
        "schools",
        "schooling",
        "teaching",
        "teacher",
        "teachers",
        "learning",
        "student",
        "students",
        "university",
        "universities",
        "college",
        "colleges",
        "academic",
    ],
    "food": ACCEPT["noun.food"],
    "law": [
        "law",
        "laws",
        "legal",
        "lawyer",
        "lawyers",
        "attorney",
        "attorneys",
        "court",
        "courts",
        "judge",
        "judges",
        "judicial",
        "justice",
        "legislation",
        "legislative",
        "lawsuit",
        "lawsuits",
    ],
    "love": ["love", "loves", "loving", "lover", "lovers", "romance", "romantic", "affection", "passion", "beloved"],
    "medicine": [
        "medicine",
        "medicines",
        "medical",
        "medication",
        "medications",
        "doctor",
        "doctors",
        "physician",
        "physicians",
        "health",
        "clinical",
        "clinic",
        "clinics",
        "hospital",
        "hospitals",
    ],
    "politics": [
        "politics",
        "political",
        "politician",
        "politicians",
        "government",
        "governments",
        "governmental",
        "governance",
        "democracy",
        "democracies",
        "democratic",
        "election",
        "elections",
        "electoral",
        "vote",
        "voting",
        "congress",
        "congressional",
        "parliament",
        "parliamentary",
    ],
    "science": [
        "science",
        "sciences",
        "scientific",
        "scientist",
        "scientists",
        "research",
        "researcher",
        "researchers",
    ],
    "sports": [
        "sport",
        "sports",
        "sporting",
        "athlete",
        "athletes",
        "athletic",
        "athletics",
        "game",
        "games",
        "team",
        "teams",
        "player",
        "players",
    ],
}
PER_TOPIC = 400
FORTUNE_CHARS = (20, 300)  # one-liners of a few words are no text to classify; long ones are stories
# Terminal overstriking in fortune files: "_\bX" underlines and "X\bX" emboldens X, "__\b\bXY" underlines a
# run; dropping each backspace with the character before it, innermost first, leaves the plain letters.
OVERSTRIKE_RE = re.compile(r"[^\x08]\x08")
# Other control characters (terminal bells in "line noise" cookies) are no text.
CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")


def unique_labels(rows: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """(text, label) rows with each text once; a text found under two labels is dropped (it has no one class)."""
    labels: dict[str, set[str]] = {}
    for text, label in rows:
        labels.setdefault(text, set()).add(label)
    seen: set[str] = set()
    out = []
    for text, label in rows:
        if len(labels[text]) == 1 and text not in seen:
            seen.add(text)
            out.append((text, label))
    return out


def sample_per_class(rows: list[tuple[str, str]], classes, per_class: int) -> list[tuple[str, str]]:
    """At most `per_class` rows of each class, seeded, each class's rows in their original order."""
    rng = random.Random(SEED)
    out = []
    for c in classes:
        members = [r for r in rows if r[1] == c]
        keep = sorted(rng.sample(range(len(members)), min(per_class, len(members))))
        out += [members[i] for i in keep]
    return out


def wordnet_glosses() -> list[tuple[str, str]]:
    """PER_CATEGORY glosses of each of CATEGORIES, with their lexicographer category."""
    _, glosses = wordnet_records()
    lo, hi = GLOSS_WORDS
    rows = [
        (" ".join(g["text"].split()), g["lexname"])
        for g in glosses
        if g["lexname"] in CATEGORIES and lo <= len(g["text"].split()) <= hi
    ]
    rows = sample_per_class(unique_labels(rows), CATEGORIES, PER_CATEGORY)
    short = [c for c in CATEGORIES if sum(r[1] == c for r in rows) < PER_CATEGORY]
    if short:
        sys.exit(f"categories {short} have fewer than {PER_CATEGORY} glosses of {lo}-{hi} words")
    return rows


def fortunes() -> list[tuple[str, str]]:
    """Up to PER_TOPIC fortunes of each topic of TOPICS, whitespace-normalised, with the topic as label."""
    lo, hi = FORTUNE_CHARS
    rows = []
    for topic in TOPICS:
        raw = (FORTUNES_DIR / topic).read_text(encoding="utf-8")
        while OVERSTRIKE_RE.search(raw):
            raw = OVERSTRIKE_RE.sub("", raw)
        for cookie in re.split(r"^%\s*$", raw, flags=re.MULTILINE):
            text = " ".join(CONTROL_RE.sub("", cookie).split())
            if lo <= len(text) <= hi:
                rows.append((text, topic))
    return sample_per_class(unique_labels(rows), TOPICS, PER_TOPIC)


def write(name: str, rows: list[tuple[str, str]]) -> None:
    texts, labels = zip(*rows)
    table = pa.Table.from_pydict({"text": list(texts), "label": list(labels)}, schema=SCHEMA)
    path = OUT / f"{name}.parquet"
    pq.write_table(table, path, compression="zstd")
    counts = {c: labels.count(c) for c in dict.fromkeys(labels)}
    print(f"wrote {path} ({path.stat().st_size:,} bytes, {len(rows)} texts): {counts}")


def main() -> None:
    require(
        [WORDNET_DIR / f"{k}.{n}" for _, n in POS_FILES for k in ("data", "index")]
        + [FORTUNES_DIR / topic for topic in TOPICS],
        packages="wordnet-base fortunes",
    )
    OUT.mkdir(exist_ok=True)
    write("wordnet_glosses", wordnet_glosses())
    write("fortunes", fortunes())
    accept = {"wordnet_glosses": {c: ACCEPT[c] for c in CATEGORIES}, "fortunes": TOPICS}
    (OUT / "accept.json").write_text(json.dumps(accept, indent=2) + "\n")
    print(f"wrote {OUT / 'accept.json'}")


if __name__ == "__main__":
    main()
