"""Captions for records that do not ship their own: templates over labels, detected objects and metadata.

SARVLM-1M writes four caption styles (paper §1.3) and we follow them:

``general``   "A SAR image of ship."                                       (class names only)
``complex``   "This is a SAR view that includes 1 ship, 14 tanks and 3 bridges."          (counts)
``absolute``  "A SAR image of 5 cars located in the upper right of the image."     (one region)
``relative``  "In this SAR image, 5 ships located in the upper right are positioned above the 3 bridges."

Object styles need ``record.metadata["objects"]`` (written by the detection-to-pairs step: a list of
``{"label", "count", "position", "size"}``); label-only records (chips) get ``general`` captions plus
*enriched* ones that add the metadata the reader lists in its ``caption_fields`` (MSTAR serial and angles,
OpenSARShip AIS type, sensor, band, resolution ...).

Records that ship captions (SARLANG-1M, user tables) keep them as they are, each once: with fewer than
``n_captions`` they are topped up by *different* template captions where the record has something to template
from (labels, objects, caption metadata), and otherwise stay fewer (SARLANG-1M's images have one to five captions;
repeating one to fill five would count it five times in the corpus and weigh it five times in retrieval). Only
records without shipped captions are filled to ``n_captions`` by cycling their generated ones when the banks run
out of distinct sentences.

Why so many phrasings: a contrastive model overfits the few fixed sentence frames of a small template bank and
then matches frames instead of content; several banks per style, articles/plurals, numbers as words or digits and
random metadata subsets give N different captions per image.

``drop_prompt_like`` (on by default, and in our recipes): the zero-shot evaluation prompts
(:mod:`lightning_sarclip.data.templates`) are held out, i.e. a generated caption that equals one of them filled
with the record's class name is dropped, so zero-shot numbers measure paraphrase understanding, not memorised
prompts. SARVLM-1M does the opposite: its ``general`` captions are the prompt form itself ("A SAR image of ship."),
so a model trained on it has seen its zero-shot prompts during training. This is one reason our zero-shot numbers
differ from the paper's; ``drop_prompt_like: false`` (the paper mode) keeps such captions. Shipped captions are
never filtered.

Everything is deterministic per ``(seed, record.key)`` (a BLAKE2 hash, not Python's salted ``hash``), so a
record's captions are the same in every worker and every run.

An optional ``rewriter`` (e.g. a local LLM that paraphrases) runs last; it is off by default, because it makes
the corpus depend on a model and on its sampling. It must return as many non-empty strings as it was given
(:func:`checked_rewrite`). ``build-corpus`` configures one by class path and caches its answers on disk
(:mod:`lightning_sarclip.data.rewriters`).
"""

from __future__ import annotations

import hashlib
import random
import re
import string
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from lightning_sarclip.data.records import GRID_POSITIONS, OBJECT_SIZES, ObjectGroup, SARRecord

__all__ = [
    "POSITIONS",
    "SIZES",
    "STYLES",
    "Captioner",
    "article",
    "checked_rewrite",
    "held_out_prompts",
    "plural",
    "pretty_classname",
]

STYLES: tuple[str, ...] = ("general", "complex", "absolute", "relative")
#: Banks a user may replace through ``template_banks``: the styles plus metadata-enriched and empty-scene ones.
BANK_NAMES: tuple[str, ...] = (*STYLES, "enriched", "negative", "metadata_only")
POSITIONS: tuple[str, ...] = GRID_POSITIONS
SIZES: tuple[str, ...] = OBJECT_SIZES
#: Metadata used for enrichment when the reader declares no ``caption_fields``.
DEFAULT_FIELDS: tuple[str, ...] = ("sensor", "band", "polarization", "resolution_m")

Rewriter = Callable[[SARRecord, list[str]], list[str]]

# ----------------------------------------------------------------------------------------------- templates
# Placeholders: {subject} noun phrase ("a BMP2", "ships and bridges"); {details} metadata phrases;
# {objects} counted noun phrase ("5 cars", "three large ships"); {be} is/are agreeing with {objects};
# {location} ("in the upper right", "at the top"); {relation} ("above", "to the left of"); {other} the second
# group ("the 3 bridges").
_BANKS: dict[str, tuple[str, ...]] = {
    "general": (
        "A SAR image showing {subject}.",
        "SAR view of {subject}.",
        "{subject} as seen by a synthetic aperture radar.",
        "A radar scene containing {subject}.",
        "This SAR chip shows {subject}.",
        "Synthetic aperture radar view of {subject}.",
        "An image of {subject} acquired by a SAR sensor.",
    ),
    "enriched": (
        "A SAR image showing {subject}, {details}.",
        "SAR view of {subject}: {details}.",
        "{subject} seen by a synthetic aperture radar, {details}.",
        "A radar chip of {subject} ({details}).",
        "This SAR image contains {subject}, {details}.",
    ),
    "metadata_only": (
        "A SAR image, {details}.",
        "A synthetic aperture radar scene, {details}.",
        "Radar imagery ({details}).",
    ),
    "complex": (
        "This is a SAR view that includes {objects}.",
        "The SAR image contains {objects}.",
        "In this radar scene there are {objects}.",
        "A SAR scene with {objects}.",
        "Synthetic aperture radar view showing {objects}.",
    ),
    "absolute": (
        "A SAR image of {objects} located {location} of the image.",
        "{objects} {be} visible {location} of this SAR image.",
        "In this SAR scene, {objects} {be} found {location}.",
        "The radar image shows {objects} {location}.",
    ),
    "relative": (
        "In this SAR image, {objects} located {location} {be} positioned {relation} {other}.",
        "{objects} {location} {be} {relation} {other} in this radar image.",
        "The SAR scene shows {objects} {location}, {relation} {other}.",
    ),
    "negative": (
        "A SAR scene without any annotated targets.",
        "No objects of interest are visible in this SAR image.",
        "A radar image of background clutter only.",
    ),
}
_BANK_FIELDS: dict[str, frozenset[str]] = {
    "general": frozenset({"subject"}),
    "enriched": frozenset({"subject", "details"}),
    "metadata_only": frozenset({"details"}),
    "complex": frozenset({"objects"}),
    "absolute": frozenset({"objects", "be", "location"}),
    "relative": frozenset({"objects", "be", "location", "relation", "other"}),
    "negative": frozenset(),
}

# Metadata phrase banks ({v} is the formatted value). Unknown fields fall back to "<field name> <value>".
_FIELD_PHRASES: dict[str, tuple[str, ...]] = {
    "serial": ("serial number {v}", "serial {v}", "with serial {v}"),
    "azimuth_deg": ("azimuth {v} degrees", "seen at an aspect angle of {v} degrees", "at {v} degrees azimuth"),
    "depression_deg": ("depression angle {v} degrees", "imaged at {v} degrees depression",
                       "at a depression of {v} degrees"),
    "incidence_deg": ("incidence angle {v} degrees", "at {v} degrees incidence", "with a {v} degree incidence"),
    "polarization": ("{v} polarization", "polarization {v}", "in {v} polarization"),
    "sensor": ("acquired by {v}", "from the {v} sensor", "sensor {v}"),
    "band": ("{v}-band", "in {v} band", "at {v} band"),
    "resolution_m": ("{v} m resolution", "at a resolution of {v} m", "with {v} meter pixels"),
    "ais_type": ("AIS type {v}", "reported by AIS as {v}", "AIS ship type {v}"),
    "subcategory": ("subcategory {v}", "more precisely {a_v}", "of the {v} kind"),
    "sub_category": ("subcategory {v}", "more precisely {a_v}", "of the {v} kind"),
    "category": ("category {v}", "in the {v} category", "{a_v} target"),
    "major_category": ("category {v}", "in the {v} category", "{a_v} target"),
    "elaborated_type": ("identified as {a_v}", "of type {v}", "registered as {a_v}"),
    "imaging_mode": ("{v} mode", "imaging mode {v}", "acquired in {v} mode"),
    "product_type": ("{v} product", "product type {v}", "from {a_v} product"),
    "look_direction": ("{v}-looking", "look direction {v}", "with a {v} look direction"),
    "location": ("{v} scene", "location {v}", "in {a_v} setting"),
    "make": ("made by {v}", "manufactured by {v}", "{a_v} vehicle"),
    "model": ("model {v}", "of model {v}", "the {v} model"),
    "length_m": ("about {v} m long", "length {v} m", "{v} meters in length"),
    "width_m": ("about {v} m wide", "width {v} m", "{v} meters across"),
}

#: Fields holding class-like names, prettified like class names (``BulkCarrier`` -> "bulk carrier").
_PRETTY_FIELDS = frozenset({"subcategory", "sub_category", "category", "major_category", "ais_type",
                            "elaborated_type"})
_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
                 "eleven", "twelve")
_INVARIANT_PLURALS = frozenset({"aircraft", "sheep", "fish", "deer", "series", "species", "equipment"})
_IRREGULAR_PLURALS = {"person": "people", "man": "men", "woman": "women", "child": "children"}
# Position -> (row, column) in the 3x3 grid, and the locative phrase.
_GRID = {p: divmod(i, 3) for i, p in enumerate(POSITIONS)}
_LOCATION = {
    "upper left": "in the upper left", "top": "at the top", "upper right": "in the upper right",
    "left": "on the left", "center": "in the center", "right": "on the right",
    "lower left": "in the lower left", "bottom": "at the bottom", "lower right": "in the lower right",
}


# ----------------------------------------------------------------------------------------------- words
def pretty_classname(name: str) -> str:
    """A class name as it should read in a sentence.

    ``bulk_carrier`` -> "bulk carrier", ``BulkCarrier`` -> "bulk carrier", ``BRDM_2`` -> "BRDM-2",
    ``ZSU_23_4`` -> "ZSU-23-4", ``BMP2``/``2S1``/``T72`` stay. Capitalised plain words become lower case
    (``Cargo`` -> "cargo") unless the name also holds an acronym (``Buick_Excelle_GT``), which marks a proper name.
    """
    text = str(name).strip()
    # Acronym/number pieces joined by "_" are hyphenated names (BRDM_2, ZSU_23_4).
    text = re.sub(r"(?<=[A-Z0-9])_(?=[0-9])", "-", text)
    text = re.sub(r"[_\s]+", " ", text)
    text = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", text)  # camelCase / CamelCase
    words = text.split(" ")
    has_acronym = any(sum(c.isupper() for c in w) >= 2 for w in words)
    if not has_acronym:
        words = [w.lower() if w[:1].isupper() and w[1:].islower() else w for w in words]
    return " ".join(w for w in words if w)


@dataclass(frozen=True)
class CaptionVocabulary:
    """What a source's captions need to know about its data, handed to :class:`Captioner` per source name.

    Args:
        nouns: class label -> the noun captions use, for labels that are modifiers alone (OpenSARShip's AIS groups
            ``Cargo`` -> "cargo ship", SAR-AIRcraft's ``other`` -> "miscellaneous aircraft"). Other labels read
            as :func:`pretty_classname`.
        fields: metadata keys worth putting into captions; ``None`` = :data:`DEFAULT_FIELDS`.

    The reader instance answers both (``caption_nouns``, ``caption_fields``); :mod:`lightning_sarclip.data.listing`
    builds the vocabulary from it, so the captioner never looks sources up by name.
    """

    nouns: Mapping[str, str] = field(default_factory=dict)
    fields: tuple[str, ...] | None = None

    def noun(self, label: str) -> str:
        """How ``label`` reads as a noun in a caption."""
        return self.nouns.get(label) or pretty_classname(label)


#: The vocabulary of records whose source handed none (synthetic scenes, ad-hoc records).
PLAIN_VOCABULARY = CaptionVocabulary()


def article(noun: str) -> str:
    """``"a"`` or ``"an"`` for ``noun`` (by sound for common acronyms: "an SUV", "an M1", "an 8x8")."""
    word = noun.strip().split(" ")[0] if noun.strip() else ""
    if not word:
        return "a"
    first = word[0]
    if word[:2].isupper() and first.isalpha():  # spelled-out acronym
        return "an" if first.upper() in "AEFHILMNORSX" else "a"
    if first.isdigit():
        return "an" if first == "8" or re.match(r"^(11|18)(\D|$)", word) else "a"
    if word.lower().startswith(("uni", "use", "usu", "one", "eu")):
        return "a"
    return "an" if first.lower() in "aeiou" else "a"


def plural(noun: str) -> str:
    """English plural of the last word (``ship`` -> ships, ``bus`` -> buses, ``aircraft`` unchanged)."""
    head, _, last = noun.rpartition(" ")
    lower = last.lower()
    if lower in _INVARIANT_PLURALS or not last:
        out = last
    elif lower in _IRREGULAR_PLURALS:
        out = _IRREGULAR_PLURALS[lower]
    elif any(c.isdigit() for c in last) or (last.isupper() and len(last) > 1):
        out = last + "s"  # BMP2s, T72s, SUVs
    elif re.search(r"(s|x|z|ch|sh)$", lower):
        out = last + "es"
    elif re.search(r"[^aeiou]y$", lower):
        out = last[:-1] + "ies"
    else:
        out = last + "s"
    return f"{head} {out}" if head else out


def _count_phrase(count: int, noun: str, rng: random.Random, size: str | None = None) -> str:
    """"5 cars", "five cars", "a ship", "three large ships"."""
    adjective = f"{size} " if size and rng.random() < 0.4 else ""
    if count == 1:
        first = rng.choice(("one", "1", "article"))
        phrase = f"{adjective}{noun}"
        return f"{article(phrase)} {phrase}" if first == "article" else f"{first} {phrase}"
    number = _NUMBER_WORDS[count] if count < len(_NUMBER_WORDS) and rng.random() < 0.5 else str(count)
    return f"{number} {adjective}{plural(noun)}"


def _join(items: Sequence[str]) -> str:
    items = list(items)
    if len(items) <= 1:
        return "".join(items)
    return f"{', '.join(items[:-1])} and {items[-1]}"


def _sentence(text: str) -> str:
    text = re.sub(r"\s+", " ", text).strip()
    text = re.sub(r"\s+([,.;:)])", r"\1", text)
    return text[:1].upper() + text[1:] if text else text


# ----------------------------------------------------------------------------------------------- held out
def _eval_templates() -> list[str]:
    from lightning_sarclip.data.templates import TEMPLATE_SETS

    return sorted({t for templates in TEMPLATE_SETS.values() for t in templates})


def _name_forms(name: str) -> set[str]:
    forms = set()
    for base in {name, pretty_classname(name), name.replace("_", " "), pretty_classname(name).lower()}:
        for noun in (base, plural(base)):
            forms |= {noun, f"a {noun}", f"an {noun}", f"the {noun}", f"one {noun}", f"1 {noun}"}
    return forms


@lru_cache(maxsize=4096)
def held_out_prompts(labels: tuple[str, ...]) -> frozenset[str]:
    """Lower-cased zero-shot prompts for ``labels`` (every eval template x article/plural forms of the names).

    Generated training captions must not equal any of these (compare ``caption.lower()``)."""
    templates = _eval_templates()
    return frozenset(t.format(form).lower() for name in labels for form in _name_forms(name) for t in templates)


# ----------------------------------------------------------------------------------------------- captioner
def _validate_bank(name: str, templates: Sequence[str]) -> tuple[str, ...]:
    if name not in _BANK_FIELDS:
        raise ValueError(f"template_banks: unknown bank {name!r}; known banks: {list(BANK_NAMES)}")
    if isinstance(templates, str) or not templates:
        raise ValueError(f"template_banks[{name!r}]: expected a non-empty list of strings, got {templates!r}")
    for template in templates:
        try:
            fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
        except ValueError as err:
            raise ValueError(f"template_banks[{name!r}]: {template!r} is not a format string ({err})") from None
        unknown = fields - _BANK_FIELDS[name]
        if unknown:
            raise ValueError(
                f"template_banks[{name!r}]: {template!r} uses unknown placeholders {sorted(unknown)}; "
                f"allowed: {sorted(_BANK_FIELDS[name])}"
            )
    return tuple(templates)


def _format_value(key: str, value: Any) -> str | None:
    if value is None or value == "" or (isinstance(value, float) and value != value):
        return None
    if isinstance(value, (list, tuple)):
        parts = [p for p in (_format_value(key, v) for v in value) if p]
        return "/".join(parts) if parts else None
    if isinstance(value, bool):
        return None
    if isinstance(value, float):
        return f"{value:.0f}" if abs(value) >= 10 or value == int(value) else f"{value:.2g}"
    text = str(value).strip()
    if key in _PRETTY_FIELDS:
        text = pretty_classname(text)
    return text or None


def _field_label(key: str) -> str:
    for unit in ("_deg", "_m", "_km", "_hz", "_ghz"):
        if key.endswith(unit):
            key = key[: -len(unit)]
    return key.replace("_", " ")


class Captioner:
    """Write ``n_captions`` captions per record (see the module docstring for the styles).

    Args:
        styles: styles to use, a subset of ``("general", "complex", "absolute", "relative")``; object styles are
            skipped for records without ``metadata["objects"]``.
        n_captions: captions per generated record (records shipping at least this many keep all of theirs).
        seed: with ``record.key`` it fixes every random choice.
        template_banks: ``{bank: [templates]}`` replacing the built-in phrasings of a bank (``general``,
            ``complex``, ``absolute``, ``relative``, ``enriched``, ``negative``, ``metadata_only``); placeholders
            are checked against the bank's (see ``_BANK_FIELDS``).
        metadata_fields: metadata keys that may enrich captions; ``None`` = the record's source vocabulary's
            ``fields`` (or sensor/band/polarization/resolution_m when it has none); ``()`` disables enrichment.
        vocabularies: per source name, the :class:`CaptionVocabulary` of its reader (nouns for modifier-only labels,
            caption fields); sources without one read with :data:`PLAIN_VOCABULARY`.
        rewriter: optional ``(record, captions) -> captions`` applied last (e.g. an LLM paraphraser); must return
            the same number of non-empty strings.
        drop_prompt_like: drop generated captions that equal a zero-shot prompt filled with the record's class
            name (see the module docstring; ``False`` is the paper's behaviour).
    """

    def __init__(
        self,
        styles: Sequence[str] = STYLES,
        n_captions: int = 5,
        seed: int = 0,
        template_banks: Mapping[str, Sequence[str]] | None = None,
        metadata_fields: Sequence[str] | None = None,
        rewriter: Rewriter | None = None,
        vocabularies: Mapping[str, CaptionVocabulary] | None = None,
        drop_prompt_like: bool = True,
    ) -> None:
        styles = tuple(styles)
        unknown = [s for s in styles if s not in STYLES]
        if unknown or not styles:
            raise ValueError(f"Captioner: styles must be a non-empty subset of {STYLES}, got {styles}")
        if n_captions < 1:
            raise ValueError(f"Captioner: n_captions must be >= 1, got {n_captions}")
        if rewriter is not None and not callable(rewriter):
            raise ValueError(f"Captioner: rewriter must be callable, got {type(rewriter).__name__}")
        if not isinstance(drop_prompt_like, bool):
            raise ValueError(f"Captioner: drop_prompt_like must be true or false, got {drop_prompt_like!r}")
        self.drop_prompt_like = drop_prompt_like
        self.styles = styles
        self.n_captions = n_captions
        self.seed = seed
        self.banks = dict(_BANKS)
        for name, templates in (template_banks or {}).items():
            self.banks[name] = _validate_bank(name, templates)
        self.metadata_fields = None if metadata_fields is None else tuple(metadata_fields)
        self.rewriter = rewriter
        self.vocabularies = dict(vocabularies or {})

    # ------------------------------------------------------------------ public
    def captions(self, record: SARRecord) -> list[str]:
        """Captions of ``record``: its own, each once (topped up towards ``n_captions`` by different template
        captions where it has labels, objects or caption metadata), or ``n_captions`` generated ones; then the
        rewriter, if any."""
        return [text for text, _ in self.captions_with_styles(record)]

    def captions_with_styles(self, record: SARRecord) -> list[tuple[str, str]]:
        """Like :meth:`captions`, each caption with the style that wrote it (``source`` for shipped captions;
        ``general``, ``enriched``, ``complex``, ``absolute``, ``relative``, ``negative``, ``metadata_only``).
        The corpus manifest records the style, and augmentation avoids flipping positional ones."""
        out = self._unrewritten(record)
        texts = self._rewrite(record, [text for text, _ in out])
        return [(text, style) for text, (_, style) in zip(texts, out, strict=True)]

    def caption_count(self, record: SARRecord) -> int:
        """How many captions :meth:`captions_with_styles` returns for ``record`` (``epoch_unit: pairs`` counts an
        image's training pairs with it), without calling the rewriter."""
        return len(self._unrewritten(record))

    def _unrewritten(self, record: SARRecord) -> list[tuple[str, str]]:
        """The captions before the rewriter: shipped ones each once, topped up by different generated ones, or
        ``n_captions`` generated ones (cycled when the templates give fewer)."""
        shipped = self._shipped(record)
        if len(shipped) >= self.n_captions:
            return shipped
        exclude = {text for text, _ in shipped}
        out = shipped + self._generate(record, self._rng(record), self.n_captions - len(shipped), exclude=exclude)
        if not out:
            raise ValueError(
                f"{record.key}: nothing to caption (no captions, labels, objects or caption metadata); "
                "the source must provide at least one of them"
            )
        if not shipped:  # generated only: cycled to n_captions; shipped captions are never repeated
            out = [out[i % len(out)] for i in range(self.n_captions)]
        return out

    @staticmethod
    def _shipped(record: SARRecord) -> list[tuple[str, str]]:
        return [(c.strip(), "source") for c in record.captions if isinstance(c, str) and c.strip()]

    def fields_for(self, record: SARRecord) -> tuple[str, ...]:
        """Metadata keys used to enrich ``record``'s captions."""
        if self.metadata_fields is not None:
            return self.metadata_fields
        fields = self.vocabulary(record).fields
        return DEFAULT_FIELDS if fields is None else fields

    def vocabulary(self, record: SARRecord) -> CaptionVocabulary:
        """The vocabulary handed for ``record``'s source (:data:`PLAIN_VOCABULARY` when none was)."""
        return self.vocabularies.get(record.source, PLAIN_VOCABULARY)

    # ------------------------------------------------------------------ internals
    def _rng(self, record: SARRecord) -> random.Random:
        digest = hashlib.blake2b(f"{self.seed}\x00{record.key}".encode(), digest_size=8).digest()
        return random.Random(int.from_bytes(digest, "little"))

    def _rewrite(self, record: SARRecord, captions: list[str]) -> list[str]:
        if self.rewriter is None:
            return captions
        return checked_rewrite(record, captions, self.rewriter(record, list(captions)))

    def _generate(self, record: SARRecord, rng: random.Random, n: int, exclude: set[str]) -> list[tuple[str, str]]:
        objects = _objects_of(record)
        details = self._details(record)
        labels = tuple(record.labels) + tuple(o.label for o in objects or ())
        held_out = held_out_prompts(tuple(dict.fromkeys(labels))) if self.drop_prompt_like else frozenset()
        pools: list[list[tuple[str, str]]] = []
        for style in self._styles_for(record, objects, details):
            pool: list[str] = []
            for _ in range(6 * n):  # bounded tries: small banks run out of distinct sentences
                text = self._one(style, record, objects, details, rng)
                if text and text not in pool and text not in exclude and text.lower() not in held_out:
                    pool.append(text)
                if len(pool) >= n:
                    break
            if pool:
                pools.append([(text, style) for text in pool])
        picked: list[tuple[str, str]] = []
        while len(picked) < n and any(pools):
            for pool in pools:
                if pool and len(picked) < n:
                    picked.append(pool.pop(0))
        return picked

    def _styles_for(self, record: SARRecord, objects: list[ObjectGroup] | None, details: list[tuple[str, str]]):
        if objects == []:  # a detection image without targets
            return ["negative"] + (["metadata_only"] if details else [])
        styles = []
        has_subject = bool(record.labels) or bool(objects)
        if "general" in self.styles and has_subject:
            styles.append("general")
            if details:
                styles.append("enriched")
        if objects:
            styles += [s for s in self.styles if s in ("complex", "absolute")]
            if "relative" in self.styles and _relations(objects):
                styles.append("relative")
        if not styles and details:
            styles.append("enriched" if has_subject else "metadata_only")
        return styles

    def _details(self, record: SARRecord) -> list[tuple[str, str]]:
        out = []
        for key in self.fields_for(record):
            value = _format_value(key, record.metadata.get(key))
            if value is not None:
                out.append((key, value))
        return out

    def _subject(self, record: SARRecord, objects: list[ObjectGroup] | None, rng: random.Random) -> str:
        if objects:
            totals: dict[str, int] = {}
            for o in objects:
                totals[o.label] = totals.get(o.label, 0) + o.count
            nouns = {label: self.vocabulary(record).noun(label) for label in totals}
            return _join([plural(nouns[label]) if count > 1 else f"{article(nouns[label])} {nouns[label]}"
                          for label, count in totals.items()])
        names = [self.vocabulary(record).noun(label) for label in record.labels]
        if len(names) == 1:
            noun = names[0]
            return f"{rng.choice((article(noun), 'the'))} {noun}"
        return _join(names)  # multi-label scenes: land-cover names read as mass nouns

    def _one(self, style: str, record: SARRecord, objects, details, rng: random.Random) -> str:
        template = rng.choice(self.banks[style])
        values: dict[str, str] = {}
        if style in ("general", "enriched"):
            values["subject"] = self._subject(record, objects, rng)
        if style in ("enriched", "metadata_only"):
            k = rng.randint(1, min(3, len(details)))
            chosen = sorted(rng.sample(range(len(details)), k))
            phrases = []
            for i in chosen:
                key, value = details[i]
                bank = _FIELD_PHRASES.get(key, (f"{_field_label(key)} {{v}}",))
                phrases.append(rng.choice(bank).format(v=value, a_v=f"{article(value)} {value}"))
            values["details"] = ", ".join(phrases)
        if style == "complex":
            totals: dict[str, int] = {}
            for o in objects:
                totals[o.label] = totals.get(o.label, 0) + o.count
            values["objects"] = _join([_count_phrase(c, self.vocabulary(record).noun(lab), rng)
                                       for lab, c in totals.items()])
        if style == "absolute":
            group = rng.choice(objects)
            values.update(self._group(group, self.vocabulary(record).noun(group.label), rng))
        if style == "relative":
            first, second, relation = rng.choice(_relations(objects))
            values.update(self._group(first, self.vocabulary(record).noun(first.label), rng))
            values["relation"] = relation
            noun = self.vocabulary(record).noun(second.label)
            other = f"the {noun}" if second.count == 1 else f"the {_count_phrase(second.count, noun, rng)}"
            if second.label == first.label:  # "above the 2 ships" would be ambiguous: say which
                other += f" {_LOCATION[second.position]}"
            values["other"] = other
        return _sentence(template.format(**values))

    @staticmethod
    def _group(group: ObjectGroup, noun: str, rng: random.Random) -> dict[str, str]:
        return {
            "objects": _count_phrase(group.count, noun, rng, group.size),
            "be": "is" if group.count == 1 else "are",
            "location": _LOCATION[group.position],
        }


def checked_rewrite(record: SARRecord, captions: Sequence[str], rewritten: Any, who: str = "rewriter") -> list[str]:
    """``rewritten`` (what a rewriter returned for ``captions``) stripped, or a ``ValueError`` naming the record
    when it is not one non-empty string per caption."""
    if not isinstance(rewritten, (list, tuple)) or len(rewritten) != len(captions):
        raise ValueError(
            f"{record.key}: {who} must return a list of {len(captions)} captions, got "
            f"{type(rewritten).__name__} of length {len(rewritten) if hasattr(rewritten, '__len__') else '?'}"
        )
    bad = [c for c in rewritten if not isinstance(c, str) or not c.strip()]
    if bad:
        raise ValueError(f"{record.key}: {who} returned empty or non-string captions: {bad!r}")
    return [c.strip() for c in rewritten]


def _relations(objects: Iterable[ObjectGroup]) -> list[tuple[ObjectGroup, ObjectGroup, str]]:
    """Ordered pairs of groups in different grid cells with the spatial relation of the first to the second."""
    out = []
    objects = list(objects)
    for a in objects:
        for b in objects:
            if a is b or a.position == b.position:
                continue
            (ra, ca), (rb, cb) = _GRID[a.position], _GRID[b.position]
            if ra != rb:
                relation = "above" if ra < rb else "below"
            else:
                relation = "to the left of" if ca < cb else "to the right of"
            out.append((a, b, relation))
    return out


def _objects_of(record: SARRecord) -> list[ObjectGroup] | None:
    """``metadata["objects"]`` as typed groups (``None`` when the record has no object list); dicts (from a
    corpus or a user's metadata) are checked field by field."""
    objects = record.metadata.get("objects")
    if objects is None:
        return None
    if not isinstance(objects, list):
        raise ValueError(f"{record.key}: metadata['objects'] must be a list, got {type(objects).__name__}")
    groups = [ObjectGroup.parse(o, f"{record.key}: metadata['objects'][{i}]") for i, o in enumerate(objects)]
    for i, group in enumerate(groups):
        if group.size is not None and group.size not in SIZES:  # the phrases exist for these bins only
            raise ValueError(f"{record.key}: metadata['objects'][{i}]: 'size' must be one of {SIZES}, "
                             f"got {group.size!r}")
    return groups
