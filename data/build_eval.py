"""Build the evaluation set: English sentences annotated with the WordNet categories of their nouns.

`toklabel eval` reads it to build supervised dictionaries (Makelov, Lange & Nanda, arXiv 2405.08366):
one attribute per WordNet lexicographer category of nouns (noun.animal, noun.food, noun.artifact, ...),
true for a sentence when one of its nouns belongs to the category.

How a sentence is annotated. Sentences are a seeded sample of the WordNet example sentences of the demo
corpus. Each lower-case alphabetic word is looked up in WordNet's noun index (Debian package
wordnet-base), first as it is, then lemmatised as WordNet's morphy does for nouns (the noun.exc
exception list, then the suffix rules -s, -ses, -xes, -zes, -ches, -shes, -men, -ies). The word's
category is the lexicographer file of its first (most frequent) noun sense. Words are skipped when they
(or their lemma) are stopwords of the label vocabulary or shorter than 3 letters, and when they are more
often something else than a noun: WordNet's sense-tagged counts (cntlist.rev, from SemCor) give the
lemma fewer noun uses than verb, adjective and adverb uses together ("run", "well", "like"); lemmas
without counts fall back to having more verb, adjective or adverb senses than noun senses.
Categories found in fewer than MIN_SENTENCES sentences are dropped.

    apt-get install wordnet-base && python data/build_eval.py

Output: data/eval/sentences.parquet (text, categories, nouns: the matched noun lemmas with their
category) and data/eval/accept.json (per category: the labels that count as naming it, and how many
sentences carry it). Accepted labels are the category's name and its synonyms or near-synonyms, never
its members ("animals" and "creature" name noun.animal, "dog" does not). Deterministic.
"""

from __future__ import annotations

import json
import random
import sys
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # workers/ from a plain `python data/...`
from build_corpus import LEXNAMES  # noqa: E402
from build_repro import CORPUS, ROOT, WORDNET, other_pos_senses, read_nouns, words  # noqa: E402

from workers.vocab import STOPWORDS  # noqa: E402

OUT = ROOT / "eval"
SEED = 0
SENTENCES = 6000
MIN_SENTENCES = 100
MIN_WORD_LENGTH = 3
# WordNet's noun detachment rules (morphy), in order: (suffix, replacement).
NOUN_SUFFIXES = (("ses", "s"), ("xes", "x"), ("zes", "z"), ("ches", "ch"), ("shes", "sh"), ("men", "man"))
NOUN_SUFFIXES += (("ies", "y"), ("s", ""))

# Labels that name each category: its name, synonyms and near-synonyms (never a member of it).
ACCEPT = {
    "noun.Tops": ["entity", "entities", "abstraction", "thing", "things"],
    "noun.act": ["act", "acts", "action", "actions", "activity", "activities", "deed", "deeds", "doing", "acting"],
    "noun.animal": [
        "animal",
        "animals",
        "creature",
        "creatures",
        "fauna",
        "beast",
        "beasts",
        "wildlife",
        "zoology",
        "zoological",
    ],
    "noun.artifact": [
        "artifact",
        "artifacts",
        "artefact",
        "artefacts",
        "object",
        "objects",
        "thing",
        "things",
        "item",
        "items",
        "device",
        "devices",
        "equipment",
        "goods",
        "product",
        "products",
        "manufactured",
        "tool",
        "tools",
        "implement",
        "implements",
    ],
    "noun.attribute": [
        "attribute",
        "attributes",
        "property",
        "properties",
        "quality",
        "qualities",
        "characteristic",
        "characteristics",
        "trait",
        "traits",
        "feature",
        "features",
    ],
    "noun.body": ["body", "bodies", "bodily", "anatomy", "anatomical", "organ", "organs", "physiology"],
    "noun.cognition": [
        "cognition",
        "cognitive",
        "knowledge",
        "thought",
        "thoughts",
        "thinking",
        "mind",
        "mental",
        "idea",
        "ideas",
        "belief",
        "beliefs",
        "reasoning",
        "intellect",
        "intellectual",
        "concept",
        "concepts",
    ],
    "noun.communication": [
        "communication",
        "communications",
        "language",
        "languages",
        "linguistic",
        "speech",
        "message",
        "messages",
        "word",
        "words",
        "writing",
        "text",
        "texts",
        "talk",
        "talking",
        "expression",
    ],
    "noun.event": ["event", "events", "happening", "happenings", "occurrence", "occurrences", "incident", "incidents"],
    "noun.feeling": ["feeling", "feelings", "emotion", "emotions", "emotional", "mood", "moods", "sentiment"],
    "noun.food": [
        "food",
        "foods",
        "eat",
        "eating",
        "meal",
        "meals",
        "dish",
        "dishes",
        "cooking",
        "cuisine",
        "culinary",
        "drink",
        "drinks",
        "beverage",
        "beverages",
        "nutrition",
        "edible",
        "diet",
    ],
    "noun.group": [
        "group",
        "groups",
        "grouping",
        "collection",
        "collections",
        "collective",
        "organization",
        "organizations",
        "organisation",
        "association",
        "associations",
    ],
    "noun.location": [
        "location",
        "locations",
        "place",
        "places",
        "region",
        "regions",
        "area",
        "areas",
        "site",
        "sites",
        "territory",
        "locality",
        "geography",
        "geographic",
        "geographical",
    ],
    "noun.motive": ["motive", "motives", "motivation", "reason", "reasons"],
    "noun.object": ["object", "objects", "nature", "natural", "landform", "terrain", "geology", "geological"],
    "noun.person": [
        "person",
        "persons",
        "people",
        "human",
        "humans",
        "individual",
        "individuals",
        "someone",
        "somebody",
        "humanity",
        "mankind",
    ],
    "noun.phenomenon": ["phenomenon", "phenomena", "nature", "natural"],
    "noun.plant": ["plant", "plants", "flora", "vegetation", "botany", "botanical", "greenery"],
    "noun.possession": [
        "possession",
        "possessions",
        "property",
        "ownership",
        "belongings",
        "asset",
        "assets",
        "wealth",
        "money",
        "finance",
        "financial",
        "economic",
    ],
    "noun.process": ["process", "processes", "processing"],
    "noun.quantity": [
        "quantity",
        "quantities",
        "amount",
        "amounts",
        "measure",
        "measures",
        "measurement",
        "measurements",
        "unit",
        "units",
        "number",
        "numbers",
        "numeric",
        "numerical",
        "count",
    ],
    "noun.relation": ["relation", "relations", "relationship", "relationships", "connection", "connections"],
    "noun.shape": ["shape", "shapes", "form", "forms", "geometry", "geometric", "figure", "figures", "outline"],
    "noun.state": ["state", "states", "condition", "conditions", "situation", "situations", "status"],
    "noun.substance": [
        "substance",
        "substances",
        "material",
        "materials",
        "matter",
        "chemical",
        "chemicals",
        "chemistry",
        "stuff",
        "compound",
        "compounds",
    ],
    "noun.time": ["time", "times", "timing", "period", "periods", "temporal", "duration", "date", "dates", "era"],
}


def noun_categories(senses: dict[str, list[str]]) -> dict[str, str]:
    """Single-word noun lemma -> lexicographer category of its first (most frequent) sense."""
    lexnum: dict[str, int] = {}
    for line in (WORDNET / "data.noun").read_text(encoding="latin-1").splitlines():
        if not line.startswith(" "):
            offset, filenum = line.split(maxsplit=2)[:2]
            lexnum[offset] = int(filenum)
    other = other_pos_senses()
    tagged = tagged_counts()

    def mostly_noun(lemma: str, n_senses: int) -> bool:
        if lemma in tagged:
            noun, rest = tagged[lemma]
            return noun >= rest
        return other.get(lemma, 0) <= n_senses

    return {
        lemma: LEXNAMES[lexnum[offs[0]]]
        for lemma, offs in senses.items()
        if lemma.isalpha()
        and len(lemma) >= MIN_WORD_LENGTH
        and lemma not in STOPWORDS
        and mostly_noun(lemma, len(offs))
    }


def tagged_counts() -> dict[str, tuple[int, int]]:
    """Lemma -> (noun uses, other uses) in WordNet's sense-tagged corpus counts (cntlist.rev)."""
    counts: dict[str, list[int]] = {}
    for line in (WORDNET / "cntlist.rev").read_text(encoding="latin-1").splitlines():
        key, _, count = line.split()
        lemma, _, lex_sense = key.partition("%")
        pair = counts.setdefault(lemma, [0, 0])
        # The sense key's first digit is the synset type: 1 = noun.
        pair[lex_sense[0] != "1"] += int(count)
    return {lemma: (n, o) for lemma, (n, o) in counts.items() if n + o > 0}


def noun_exceptions() -> dict[str, str]:
    """Irregular plural -> lemma, from WordNet's noun.exc."""
    out = {}
    for line in (WORDNET / "noun.exc").read_text(encoding="latin-1").splitlines():
        fields = line.split()
        if len(fields) >= 2:
            out[fields[0]] = fields[1]
    return out


def noun_lemma(word: str, nouns: dict[str, str], exceptions: dict[str, str]) -> str | None:
    """The noun lemma of `word` (as WordNet's morphy finds it), or None when it is no known noun."""
    if word in nouns:
        return word
    if exceptions.get(word) in nouns:
        return exceptions[word]
    for suffix, replacement in NOUN_SUFFIXES:
        if word.endswith(suffix) and word[: -len(suffix)] + replacement in nouns:
            return word[: -len(suffix)] + replacement
    return None


def annotate(text: str, nouns: dict[str, str], exceptions: dict[str, str]) -> list[str]:
    """The sentence's noun lemmas that carry a category, in order, without repeats."""
    found = (noun_lemma(w, nouns, exceptions) for w in words(text) if w not in STOPWORDS)
    return list(dict.fromkeys(lemma for lemma in found if lemma))


def main() -> None:
    _, senses = read_nouns()
    nouns = noun_categories(senses)
    exceptions = noun_exceptions()
    english = [json.loads(line) for line in CORPUS.open(encoding="utf-8")]
    english = [r["text"] for r in english if r["source"] == "wordnet-example"]
    texts = random.Random(SEED).sample(english, SENTENCES)
    lemmas = [annotate(t, nouns, exceptions) for t in texts]
    counts = Counter(c for found in lemmas for c in {nouns[lemma] for lemma in found})
    kept = sorted(c for c, n in counts.items() if n >= MIN_SENTENCES)
    missing = [c for c in kept if c not in ACCEPT]
    if missing:
        sys.exit(f"categories {missing} have no accept list in ACCEPT")
    rows = [
        {
            "text": t,
            "categories": sorted({nouns[lemma] for lemma in found} & set(kept)),
            "nouns": [f"{lemma}:{nouns[lemma]}" for lemma in found],
        }
        for t, found in zip(texts, lemmas)
    ]
    schema = pa.schema([("text", pa.string()), ("categories", pa.list_(pa.string())), ("nouns", pa.list_(pa.string()))])
    OUT.mkdir(exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), OUT / "sentences.parquet", compression="zstd")
    accept = {c: {"accept": ACCEPT[c], "sentences": counts[c]} for c in kept}
    (OUT / "accept.json").write_text(json.dumps(accept, indent=2) + "\n")
    for c in sorted(counts, key=lambda c: -counts[c]):
        print(f"{c:<20} {counts[c]:>5} sentences{'' if c in kept else '  (dropped)'}")
    print(f"{len(nouns)} noun lemmas; {len(kept)} categories kept; wrote {OUT}")


if __name__ == "__main__":
    main()
