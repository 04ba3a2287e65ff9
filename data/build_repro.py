"""Build the paper-reproduction examples tables: text-level features of known meaning.

Schulz & Fallows (arXiv 2504.00754) label four synthetic features: "mentions an animal", "mentions a
mammal", "is Chinese text" and "contains a number", and report that a natural-frequency (unbalanced)
mammal feature collapses to "animal". This script rebuilds those features over the shipped demo
corpus. Word meanings come from WordNet's noun hierarchy (Debian package wordnet-base):

    apt-get install wordnet-base && python data/build_repro.py

Output: data/repro/features.parquet, an examples table (feature_id, text, activation, split,
concept) with a seeded train/test split, and data/repro/concepts.json (feature id, concept name,
the labels that count as naming it, and how the feature was built).
"""

from __future__ import annotations

import json
import random
import re
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

WORDNET = Path("/usr/share/wordnet")
ROOT = Path(__file__).resolve().parent
CORPUS = ROOT / "corpus" / "demo.jsonl"
OUT = ROOT / "repro"
SEED = 0
PER_CLASS = 150  # positives and negatives per balanced feature
DOMINANT = 0.8  # share of a lemma's tagged uses that must carry the concept
TEST_FRACTION = 0.3
# "one" is left out: it is mostly a pronoun ("one's", "no one").
NUMBER_WORDS = set(
    """two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen
    seventeen eighteen nineteen twenty thirty forty fifty sixty seventy eighty ninety hundred thousand
    million billion dozen""".split()
)

# Accepted labels: the concept or a close synonym (the category, not a member or the parent).
CONCEPTS = {
    0: ("animal", ["animal", "animals", "fauna", "creature", "creatures", "wildlife", "beast", "beasts"]),
    1: ("mammal", ["mammal", "mammals", "mammalian"]),
    2: ("chinese", ["chinese", "china", "mandarin"]),
    3: (
        "number",
        [
            "number",
            "numbers",
            "numeral",
            "numerals",
            "digit",
            "digits",
            "numeric",
            "numerical",
            "quantity",
            "quantities",
            "count",
            "counting",
            "numbering",
            "figures",
        ],
    ),
    4: ("mammal-unbalanced", ["mammal", "mammals", "mammalian"]),
}


def read_nouns() -> tuple[dict[str, list[str]], dict[str, list[str]], dict[str, str]]:
    """(synset offset -> hypernym offsets, lemma -> its noun synset offsets in sense order,
    noun sense key -> synset offset)."""
    for name in ("data.noun", "index.noun", "cntlist.rev"):
        if not (WORDNET / name).is_file():
            sys.exit(f"{WORDNET / name} is missing: apt-get install wordnet-base")
    hypernyms: dict[str, list[str]] = {}
    sense_keys: dict[str, str] = {}
    for line in (WORDNET / "data.noun").read_text(encoding="latin-1").splitlines():
        if line.startswith(" "):
            continue
        fields = line.split(" | ")[0].split()
        offset, lex_file, n_words = fields[0], int(fields[1]), int(fields[3], 16)
        for i in range(n_words):
            lemma, lex_id = fields[4 + 2 * i].lower(), int(fields[5 + 2 * i], 16)
            sense_keys[f"{lemma}%1:{lex_file:02d}:{lex_id:02d}::"] = offset
        rest = fields[4 + 2 * n_words :]
        n_ptrs = int(rest[0])
        ptrs = [rest[1 + 4 * i : 5 + 4 * i] for i in range(n_ptrs)]
        hypernyms[offset] = [p[1] for p in ptrs if p[0] in ("@", "@i") and p[2] == "n"]
    senses: dict[str, list[str]] = {}
    for line in (WORDNET / "index.noun").read_text(encoding="latin-1").splitlines():
        if line.startswith(" "):
            continue
        fields = line.split()
        lemma, synset_cnt, p_cnt = fields[0], int(fields[2]), int(fields[3])
        senses[lemma] = fields[4 + p_cnt + 2 :][:synset_cnt]
    return hypernyms, senses, sense_keys


def tagged_counts() -> dict[str, dict[str, int]]:
    """lemma -> {sense key: times that sense was tagged in WordNet's semantic concordance}, all parts of speech."""
    counts: dict[str, dict[str, int]] = {}
    for line in (WORDNET / "cntlist.rev").read_text(encoding="latin-1").splitlines():
        key, _, count = line.split()
        counts.setdefault(key.split("%")[0], {})[key] = int(count)
    return counts


def under(offset: str, root: str, hypernyms: dict[str, list[str]], memo: dict[str, bool]) -> bool:
    """Whether synset `offset` lies below `root` in the hypernym graph."""
    if offset == root:
        return True
    if offset not in memo:
        memo[offset] = False  # guards cycles
        memo[offset] = any(under(h, root, hypernyms, memo) for h in hypernyms.get(offset, []))
    return memo[offset]


def other_pos_senses() -> dict[str, int]:
    """Most senses a lemma has as a verb, adjective or adverb."""
    counts: dict[str, int] = {}
    for pos in ("verb", "adj", "adv"):
        for line in (WORDNET / f"index.{pos}").read_text(encoding="latin-1").splitlines():
            if not line.startswith(" "):
                fields = line.split()
                counts[fields[0]] = max(counts.get(fields[0], 0), int(fields[2]))
    return counts


def lemma_sets(root_lemma: str, hypernyms, senses, sense_keys, exclude: str = "hominid") -> tuple[set[str], set[str]]:
    """(lemmas that in running text almost always mean something below the root's first sense,
    lemmas with any such noun sense): single words, humans left out.

    A lemma is kept when at least `DOMINANT` of its tagged uses (WordNet's sense counts, every part of
    speech) are such senses; untagged lemmas need their first noun sense below the root and no more senses
    as a verb, adjective or adverb. "young" (mostly an adjective), "bat" (mostly the club or the verb)
    and "queen" are left out this way. The second set names the words that may mean the concept, so
    that such texts are neither positives nor negatives.
    """
    root, memo, human_memo = senses[root_lemma][0], {}, {}
    other = other_pos_senses()
    counts = tagged_counts()

    def below(offset: str) -> bool:
        return under(offset, root, hypernyms, memo) and not under(offset, senses[exclude][0], hypernyms, human_memo)

    strong, weak = set(), set()
    for lemma, offs in senses.items():
        if "_" in lemma or not any(below(o) for o in offs):
            continue
        weak.add(lemma)
        tagged = counts.get(lemma, {})
        total = sum(tagged.values())
        if total:
            hits = sum(c for key, c in tagged.items() if key in sense_keys and below(sense_keys[key]))
            if hits >= DOMINANT * total:
                strong.add(lemma)
        elif below(offs[0]) and other.get(lemma, 0) <= len(offs):
            strong.add(lemma)
    return strong, weak


def words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


def mentions(text: str, lemmas: set[str]) -> bool:
    """Whether a word of `text` is one of `lemmas`; plain plurals count ("dogs" mentions a dog), names do not:
    a capitalised word inside the sentence ("Elephant Island", "the Broncos") is a proper noun."""
    tokens = re.findall(r"[A-Za-z]+", text)
    return any(
        (w.lower() in lemmas or (w.endswith("s") and w[:-1].lower() in lemmas)) and (i == 0 or not w[0].isupper())
        for i, w in enumerate(tokens)
    )


def maybe_mentions(text: str, lemmas: set[str]) -> bool:
    """Whether any word of `text`, capitalised or not, may be one of `lemmas`."""
    return any(w in lemmas or (w.endswith("s") and w[:-1] in lemmas) for w in words(text))


def main() -> None:
    hypernyms, senses, sense_keys = read_nouns()
    mammals, maybe_mammals = lemma_sets("mammal", hypernyms, senses, sense_keys)
    animals, maybe_animals = lemma_sets("animal", hypernyms, senses, sense_keys)
    records = [json.loads(line) for line in CORPUS.open()]
    english = [r["text"] for r in records if r["source"] == "wordnet-example"]
    chinese = [r["text"] for r in records if r["source"] in ("tang300", "song100")]
    rng = random.Random(SEED)
    # Texts that may or may not mention the concept ("the young girl", "bat the ball") are in neither class.
    is_mammal = [t for t in english if mentions(t, mammals)]
    no_mammal = {t for t in english if not maybe_mentions(t, maybe_mammals)}
    is_animal = [t for t in english if mentions(t, animals)]
    other_animal = [t for t in is_animal if t in no_mammal]
    plain = [t for t in english if not maybe_mentions(t, maybe_animals)]
    has_number = [t for t in english if re.search(r"\d", t) or set(words(t)) & NUMBER_WORDS]
    no_number = [t for t in english if t not in set(has_number)]

    def sample(pool, n):
        return rng.sample(pool, min(n, len(pool)))

    features = {
        0: (sample(is_animal, PER_CLASS), sample(plain, PER_CLASS)),
        # Balanced as in the paper: half of the negatives are other animals.
        1: (sample(is_mammal, PER_CLASS), sample(other_animal, PER_CLASS // 2) + sample(plain, PER_CLASS // 2)),
        2: (sample(chinese, PER_CLASS), sample(english, PER_CLASS)),
        3: (sample(has_number, PER_CLASS), sample(no_number, PER_CLASS)),
    }
    natural = sample(english, 3000)
    features[4] = ([t for t in natural if t in set(is_mammal)], [t for t in natural if t in no_mammal])

    rows = []
    for fid, (pos, neg) in features.items():
        for label, texts in ((1.0, pos), (0.0, neg)):
            test = set(rng.sample(range(len(texts)), round(TEST_FRACTION * len(texts))))
            rows += [
                {
                    "feature_id": fid,
                    "text": t,
                    "activation": label,
                    "split": "test" if i in test else "train",
                    "concept": CONCEPTS[fid][0],
                }
                for i, t in enumerate(texts)
            ]
    schema = pa.schema(
        [
            ("feature_id", pa.int64()),
            ("text", pa.string()),
            ("activation", pa.float32()),
            ("split", pa.string()),
            ("concept", pa.string()),
        ]
    )
    OUT.mkdir(exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), OUT / "features.parquet")
    meta = [
        {
            "feature_id": fid,
            "concept": name,
            "accept": accept,
            "positives": len(features[fid][0]),
            "negatives": len(features[fid][1]),
        }
        for fid, (name, accept) in CONCEPTS.items()
    ]
    (OUT / "concepts.json").write_text(json.dumps(meta, indent=2) + "\n")
    for m in meta:
        print(f"{m['feature_id']}  {m['concept']:<18} {m['positives']:>4} positives  {m['negatives']:>5} negatives")
    print(
        f"mammal lemmas {len(mammals)} (+{len(maybe_mammals - mammals)} ambiguous), animal lemmas {len(animals)} "
        f"(+{len(maybe_animals - animals)} ambiguous); wrote {OUT}"
    )


if __name__ == "__main__":
    main()
