"""Emoji catalogue and class selection: which emojis become EmojiDG classes, and the base/new split.

The catalogue is OpenMoji's data/openmoji.json (CLDR annotations, groups, tags). Everything here is
pure (no I/O besides reading that JSON) so the rules are unit-tested.
"""
from __future__ import annotations

import json
import random
import re
import unicodedata
from dataclasses import asdict, dataclass, field
from pathlib import Path

# openmoji group -> category; only these five are used (the prototype found them most distinct).
CATEGORIES = {
    "animals-nature": "Animals & Nature",
    "food-drink": "Food & Drink",
    "travel-places": "Travel & Places",
    "activities": "Activities",
    "objects": "Objects",
}
# Variation selectors: presentation only, so they are stripped before matching.
VARIATION_SELECTORS = {0xFE0E, 0xFE0F}
ZWJ = 0x200D
SKIN_TONES = range(0x1F3FB, 0x1F400)
REGIONAL_INDICATORS = range(0x1F1E6, 0x1F200)  # flags
TAGS = range(0xE0020, 0xE0080)  # subdivision flags
KEYCAP = 0x20E3
# Person / gender codepoints: a ZWJ sequence containing one is a person variant, not a thing.
PERSON_CPS = {0x1F466, 0x1F467, 0x1F468, 0x1F469, 0x1F9D1, 0x1F9D2, 0x2640, 0x2642, 0x26A7}
GENDER_WORDS = re.compile(r"\b(man|woman|men|women|boy|girl|person|people|family|couple|adult|child|baby)\b")
CLOCK_WORDS = re.compile(r"o'clock|thirty")  # 24 near-identical clock faces crowd the label space
# Words ignored when testing two names for near-duplication ("dog face" ~ "dog").
QUALIFIERS = {"face", "with", "of", "the", "a", "an", "and"}


def normalize_seq(seq: str) -> str:
    """Canonical codepoint sequence: 'XXXX-YYYY' upper-case hex, >= 4 digits, FE0E/FE0F removed.

    Accepts file-name style ('1f34e-fe0f', '39-fe0f-20e3', 'U+1F34E', '1F34E_200D') and is the single
    matching key between sets that disagree about variation selectors and zero padding.
    """
    parts = [p for p in re.split(r"[-_\s]+", seq.strip().lower().replace("u+", "")) if p]
    cps = [int(p, 16) for p in parts]
    return "-".join(f"{cp:04X}" for cp in cps if cp not in VARIATION_SELECTORS)


def seq_from_chars(emoji: str) -> str:
    """Sequence key of an emoji string."""
    return normalize_seq("-".join(f"{ord(c):X}" for c in emoji))


def codepoints(seq: str) -> list[int]:
    return [int(p, 16) for p in seq.split("-")] if seq else []


def slug(text: str) -> str:
    """'Man’s Shoe: light' -> "mans-shoe-light"; used for iconify icon names and folder names."""
    text = text.lower().replace("’", "").replace("'", "").replace("&", "and")
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-")


def class_name(annotation: str) -> str:
    """Readable lower-case English noun phrase for prompts: 'Red Apple' -> 'red apple'."""
    name = annotation.lower().replace("’", "'").replace("“", "").replace("”", "")
    return re.sub(r"\s+", " ", name).strip()


def dirname_for(name: str) -> str:
    """File-system-safe folder name for a class: 'man's shoe' -> 'mans_shoe'."""
    return slug(name).replace("-", "_")


@dataclass
class Entry:
    """One catalogue emoji."""

    seq: str
    emoji: str
    name: str
    category: str
    subgroup: str
    keywords: list[str] = field(default_factory=list)
    order: int = 0
    skintone: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def load_openmoji_catalog(path: Path) -> list[Entry]:
    """Read openmoji.json; keeps every group (filtering happens in reject_reason)."""
    out = []
    for e in json.loads(Path(path).read_text()):
        kws = [k.strip() for k in (e.get("tags", "") + "," + e.get("openmoji_tags", "")).split(",")]
        out.append(Entry(seq=normalize_seq(e["hexcode"]), emoji=e["emoji"], name=class_name(e["annotation"]),
                         category=e["group"], subgroup=e.get("subgroups", ""),
                         keywords=sorted({k for k in kws if k}), order=int(e.get("order") or 0),
                         skintone=str(e.get("skintone", "") or "")))
    return out


def reject_reason(entry: Entry) -> str | None:
    """Why an emoji cannot be a class (None = acceptable). Documented rules, in order:

    category outside the five concrete groups; skin-tone modifier; flag (regional indicators / tag
    sequences); keycap; ZWJ sequence with a person/gender codepoint; person/gender word in the name
    (man, woman, person, family, ...); clock faces.
    """
    cps = codepoints(entry.seq)
    if entry.category not in CATEGORIES:
        return "category"
    if entry.skintone or any(cp in SKIN_TONES for cp in cps):
        return "skin tone"
    if any(cp in REGIONAL_INDICATORS or cp in TAGS for cp in cps):
        return "flag"
    if KEYCAP in cps:
        return "keycap"
    if ZWJ in cps and any(cp in PERSON_CPS for cp in cps):
        return "person variant"
    if GENDER_WORDS.search(entry.name):
        return "person word"
    if CLOCK_WORDS.search(entry.name):
        return "clock"
    return None


def dedup_key(name: str) -> tuple[str, ...]:
    """Names equal after dropping qualifier words ('face', 'with', ...) are near-duplicates."""
    tokens = [t for t in re.split(r"[^a-z0-9']+", name.lower()) if t and t not in QUALIFIERS]
    return tuple(sorted(tokens))


def drop_near_duplicates(entries: list[Entry]) -> tuple[list[Entry], list[tuple[str, str]]]:
    """Keep one entry per dedup_key: the shortest name ('dog' over 'dog face'), ties by catalogue order.

    Returns (kept in input order, [(dropped name, kept name)]).
    """
    best: dict[tuple[str, ...], Entry] = {}
    for e in entries:
        k = dedup_key(e.name)
        if k not in best or (len(e.name), e.order) < (len(best[k].name), best[k].order):
            best[k] = e
    keep = {id(e) for e in best.values()}
    dropped = [(e.name, best[dedup_key(e.name)].name) for e in entries if id(e) not in keep]
    return [e for e in entries if id(e) in keep], dropped


def name_keys(entry: Entry) -> list[str]:
    """Keys by which icon sets without codepoint tables (iconify names) are matched to an emoji:
    the CLDR slug, the Unicode character name slug (older sets such as fxemoji use it), and both
    with separators removed."""
    keys = [slug(entry.name)]
    cps = codepoints(entry.seq)
    if len(cps) == 1:
        try:
            keys.append(slug(unicodedata.name(chr(cps[0]))))
        except ValueError:
            pass
    return keys + [k.replace("-", "") for k in keys]


def select_classes(entries: list[Entry], available: dict[str, set[str]], downstream: list[str],
                   pretrain: list[str], min_pretrain: int, max_classes: int | None = None,
                   ) -> tuple[list[Entry], dict]:
    """Classes = filtered, de-duplicated entries present in EVERY downstream domain and in at least
    `min_pretrain` pretraining styles. If more than `max_classes` survive, keep those with the most
    pretraining styles (ties by catalogue order), so the cap is deterministic.

    Returns (classes sorted by category then name, stats).
    """
    stats: dict = {"catalog": len(entries), "rejected": {}}
    ok = []
    for e in entries:
        r = reject_reason(e)
        if r:
            stats["rejected"][r] = stats["rejected"].get(r, 0) + 1
        else:
            ok.append(e)
    in_all = [e for e in ok if all(e.seq in available[d] for d in downstream)]
    stats["candidates"] = len(ok)
    stats["in_all_downstream"] = len(in_all)
    n_pre = {e.seq: sum(e.seq in available[s] for s in pretrain) for e in in_all}
    enough = [e for e in in_all if n_pre[e.seq] >= min_pretrain]
    stats["enough_pretrain"] = len(enough)
    kept, dropped = drop_near_duplicates(enough)
    stats["near_duplicates_dropped"] = dropped
    if max_classes is not None and len(kept) > max_classes:
        kept = sorted(kept, key=lambda e: (-n_pre[e.seq], e.order))[:max_classes]
    order = list(CATEGORIES)
    kept.sort(key=lambda e: (order.index(e.category), e.name))
    stats["classes"] = len(kept)
    return kept, stats


def split_base_new(classes: list[Entry], seed: int) -> tuple[list[int], list[int]]:
    """Fixed base/new split of class indices, half each, balanced per category.

    Within a category the classes are sorted by name, shuffled with random.Random(f"{seed}:{category}")
    and the first half goes to base; a category with an odd count gives its extra class alternately
    to base and new (categories in CATEGORIES order), so totals differ by at most one.
    """
    base, new = [], []
    extra_to_base = True
    for cat in CATEGORIES:
        idx = sorted((i for i, c in enumerate(classes) if c.category == cat), key=lambda i: classes[i].name)
        random.Random(f"{seed}:{cat}").shuffle(idx)
        half = len(idx) // 2
        if len(idx) % 2:
            half += extra_to_base
            extra_to_base = not extra_to_base
        base += idx[:half]
        new += idx[half:]
    return sorted(base), sorted(new)
