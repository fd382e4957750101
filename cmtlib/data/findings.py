"""The finding vocabulary: which finding texts give which labels (DESIGN.md, Manifest table).

A label comes only from text the vocabulary recognises. Anything else (garbled or mis-decoded
bytes, an unknown disease name, a negation, a finding that names both healthy and a disease) gives
no label: the importer leaves the labels unknown and notes the text, and `cmt data check` reports a
row whose unrecognised finding still carries one. docs/CONTRACTS.md publishes the vocabulary
(a test keeps the two in step); a user adds entries with `--finding TEXT=CLASS` or the params key
`findings`.

How a finding is read, after `normalise` (Unicode NFKC; invisible and space-like characters, and
'_', become a space; case folded):

1. the whole text is a PHRASE of the vocabulary: its class;
2. otherwise it is cut at | , ; / + (outside brackets) into parts (an empty one says nothing),
   and each part is read alone: a PHRASE, or a QUALIFIER (viral, bacterial, ...: adds nothing),
   or a part that holds one or more DISEASE
   words (`pneumonia`, `pleural effusion`, `covid-19`, as whole words) and no negation (no, not,
   without, negative, ...): other disease, or COVID-19 where one of them names it; an uncertainty
   word (uncertain, possible, suspected, ...) makes such a part unknown. A part that is none of
   these is not recognised, and then neither is the finding;
3. the parts together: COVID-19 wins over other diseases ("COVID-19, ARDS"); a disease with
   "healthy" is a contradiction (no label); healthy with unknown is unknown; "not COVID-19" with
   another disease is that disease (label_covid 0 either way).

Classes: healthy (1, 0, 0), covid (0, 1, 0), other (0, 0, 1), unknown ('', '', ''), and the
built-in not_covid ('', 0, '') for texts such as "non-COVID" that say only what a film is not.
Pre-2020 collections (NIH, CheXpert, TBX11K) cannot hold COVID-19: unknown there is ('', 0, ''),
and COVID-19 is an error (the row is quarantined).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from cmtlib.data.manifest import ManifestError
from cmtlib.data.rules import normalise_text
from cmtlib.errors import ConfigError

HEALTHY = ("1", "0", "0")
COVID = ("0", "1", "0")
OTHER = ("0", "0", "1")
UNKNOWN = ("", "", "")
UNKNOWN_PRE2020 = ("", "0", "")

# The classes a user may give a text (`--finding TEXT=CLASS`); not_covid is built in only.
USER_CLASSES = ("healthy", "covid", "other", "unknown")
CLASS_LABELS = {"healthy": HEALTHY, "covid": COVID, "other": OTHER, "unknown": UNKNOWN, "not_covid": UNKNOWN_PRE2020}

# Whole texts (or whole parts) and their class. Healthy and unknown texts count only whole: "normal"
# inside "not normal" or "normal heart, effusion" says nothing about the film.
PHRASES: dict[str, str] = {
    **dict.fromkeys(("no finding", "no findings", "normal", "healthy"), "healthy"),
    **dict.fromkeys(("", "todo", "unknown", "uncertain", "nan", "?", "n/a", "na", "none", "support devices"), "unknown"),
    **dict.fromkeys(("non-covid", "non covid", "noncovid", "non-covid-19", "not covid", "not covid-19", "covid negative",
                     "covid-19 negative"), "not_covid"),
    # TBX11K's "sick but not tuberculosis" folder; RSNA's abnormal-without-opacity class.
    **dict.fromkeys(("sick, not tuberculosis", "sick but non-tb", "no lung opacity / not normal"), "other"),
}
# Parts that only qualify the part beside them ("Pneumonia/Viral/COVID-19").
QUALIFIERS = frozenset(("viral", "bacterial", "fungal"))
# Words that may stand inside a longer finding ("Mycoplasma Bacterial Pneumonia", "left pleural effusion").
# A hyphen, a space or nothing between the pieces of a word are alike: `covid-19` is also "covid 19"
# and "covid19", `sars-cov-2` also "SARS-CoV2".
DISEASES: dict[str, str] = {
    **dict.fromkeys(("covid", "covid-19", "sars-cov-2", "2019-ncov"), "covid"),
    **dict.fromkeys((
        # NIH ChestX-ray14's 14 labels; CheXpert's observations
        "atelectasis", "cardiomegaly", "consolidation", "edema", "effusion", "emphysema", "fibrosis", "hernia",
        "infiltration", "mass", "nodule", "pleural thickening", "pneumonia", "pneumothorax",
        "enlarged cardiomediastinum", "lung opacity", "lung lesion", "pleural effusion", "pleural other", "fracture",
        # ieee8023 (Cohen et al.): causes of pneumonia and ARDS
        "ards", "sars", "mers", "mers-cov", "e. coli", "escherichia coli", "klebsiella", "legionella",
        "mycoplasma", "pneumocystis", "streptococcus", "staphylococcus", "mrsa", "chlamydophila", "nocardia",
        "pseudomonas", "aspergillosis", "lipoid", "aspiration", "varicella", "herpes", "influenza", "h1n1",
        # TBX11K; other words of chest X-ray reports and collections
        "tuberculosis", "tb", "pneumonitis", "opacity", "opacities", "infiltrate", "infiltrates", "nodules", "masses",
        "effusions", "bronchiectasis", "ground-glass", "lesion", "lesions", "oedema", "copd", "asthma", "bronchitis",
        "cancer", "carcinoma", "tumor", "tumour", "metastasis", "metastases", "sarcoidosis", "abscess", "embolism",
        "granuloma", "lymphadenopathy", "silicosis", "pneumoconiosis",
    ), "other"),
}
NEGATIONS = frozenset(("no", "not", "non", "without", "negative", "neg", "absent", "free", "excluded", "ruled", "denies"))
UNCERTAIN = frozenset(("uncertain", "possible", "possibly", "probable", "probably", "suspected", "suspect", "suspicion",
                       "likely", "questionable", "query", "maybe", "?"))
_SEPARATORS = re.compile(r"[|,;/+]")
_WORDS = re.compile(r"[^\W_]+|\?")


def normalise(text: object) -> str:
    """A finding as the vocabulary compares it: rules.normalise_text, with '_' as a space
    ("Pleural_Thickening" is "pleural thickening")."""
    return " ".join(normalise_text(text).replace("_", " ").split())


@dataclass(frozen=True)
class Verdict:
    """What a finding says: `cls` (healthy, covid, other, unknown, not_covid) or None when it gives
    no label, and then `why` (a phrase for the note)."""

    cls: str | None
    why: str = ""

    @property
    def recognised(self) -> bool:
        return self.cls is not None


class Vocabulary:
    """The built-in vocabulary plus a user's entries (normalised text -> class), which win."""

    def __init__(self, extra: Mapping[str, str] | None = None) -> None:
        self.extra = dict(extra or {})
        self.phrases = {**PHRASES, **self.extra}
        # Disease words, built-in and the user's covid / other texts, longest first (so that
        # 'sars-cov-2' is read before 'sars').
        words = {**DISEASES, **{t: c for t, c in self.extra.items() if c in ("covid", "other")}}
        self.diseases = dict(sorted(words.items(), key=lambda kv: -len(kv[0])))
        self._pattern = re.compile(r"(?<!\w)(?:" + "|".join(_word_pattern(w) for w in self.diseases) + r")(?!\w)")
        self._words = [(re.compile(rf"(?:{_word_pattern(w)})\Z"), c) for w, c in self.diseases.items()]

    def classify(self, finding: object) -> Verdict:
        text = normalise(finding)
        if text in self.phrases:
            return Verdict(self.phrases[text])
        classes: list[str] = []
        for part in _parts(text):
            if part in QUALIFIERS or part == "":  # "Effusion|" : an empty part says nothing
                continue
            verdict = self._part(part)
            if not verdict.recognised:
                return verdict
            classes.append(verdict.cls)
        return _combine(classes)

    def _part(self, part: str) -> Verdict:
        if part in self.phrases:
            return Verdict(self.phrases[part])
        found = [self._class_of(m.group()) for m in self._pattern.finditer(part)]
        if not found:
            return Verdict(None, f"{part!r} names nothing the vocabulary knows")
        rest = set(_WORDS.findall(self._pattern.sub(" ", part)))
        if rest & NEGATIONS:
            return Verdict(None, f"{part!r} is negated ({', '.join(sorted(rest & NEGATIONS))}): what it says is not a class")
        if rest & UNCERTAIN:
            return Verdict("unknown")
        return Verdict("covid" if "covid" in found else "other")

    def _class_of(self, word: str) -> str:
        """The class of a disease word as found in the text ('covid 19' is `covid-19`'s)."""
        return next(c for pattern, c in self._words if pattern.match(word))

    def labels(self, finding: object, pre2020: bool = False) -> tuple[str, str, str]:
        """The three labels a finding gives (module docstring); unknown when it is not recognised.

        Raises:
            ManifestError: COVID-19 named in a pre-2020 collection (the importer quarantines the row).
        """
        cls = self.classify(finding).cls or "unknown"
        if pre2020 and cls == "covid":
            raise ManifestError(f"finding {str(finding).strip()!r} names COVID-19 in a pre-2020 collection; check the source")
        if pre2020 and cls in ("unknown", "not_covid"):
            return UNKNOWN_PRE2020
        return CLASS_LABELS[cls]


def _word_pattern(word: str) -> str:
    """A disease word as a pattern in which a hyphen or a space may also be nothing."""
    return re.sub(r"\\[- ]", r"[-\\s]?", re.escape(word))


def _parts(text: str) -> list[str]:
    """The text cut at the separators outside brackets: "Tuberculosis (Active, Obsolete)" is one
    part, whose bracket qualifies it."""
    parts, depth, start = [], 0, 0
    for k, ch in enumerate(text):
        depth += (ch in "([{") - (ch in ")]}")
        if depth <= 0 and _SEPARATORS.match(ch):
            parts.append(text[start:k].strip())
            start, depth = k + 1, 0
    return parts + [text[start:].strip()]


def _combine(classes: list[str]) -> Verdict:
    kinds = set(classes)
    if not kinds:
        return Verdict(None, "names no finding (only separators or qualifiers such as viral, bacterial, fungal)")
    if "healthy" in kinds and kinds & {"covid", "other"}:
        return Verdict(None, "names both a normal film and a disease")
    if "covid" in kinds and "not_covid" in kinds:
        return Verdict(None, "names COVID-19 and says it is not COVID-19")
    for cls in ("covid", "other"):
        if cls in kinds:
            return Verdict(cls)
    if "healthy" in kinds:
        return Verdict("unknown" if "unknown" in kinds else "healthy")
    return Verdict("not_covid" if "not_covid" in kinds else "unknown")


def parse_entries(entries: Iterable[str], flag: str = "--finding") -> dict[str, str]:
    """'TEXT=CLASS' strings (the `--finding` flag, the params key `findings`) as normalised text -> class.

    Raises:
        ConfigError: an entry without '=', with an empty text, or a class other than USER_CLASSES.
    """
    out: dict[str, str] = {}
    for entry in entries or []:
        text, sep, cls = str(entry).rpartition("=")
        cls = cls.strip().lower()
        if not sep or not normalise(text):
            raise ConfigError(f"{flag} {entry!r}: write TEXT=CLASS, e.g. {flag} 'Bronchiolitis=other'")
        if cls not in USER_CLASSES:
            raise ConfigError(f"{flag} {entry!r}: the class must be one of {', '.join(USER_CLASSES)}, got {cls!r}")
        out[normalise(text)] = cls
    return out


def vocabulary(entries: Iterable[str] | Mapping[str, str] | None = None) -> Vocabulary:
    """The vocabulary with a user's entries ('TEXT=CLASS' strings, or a parsed mapping) added."""
    if isinstance(entries, Mapping):
        return Vocabulary(entries)
    return Vocabulary(parse_entries(entries or []))


BUILT_IN = Vocabulary()
