"""The finding vocabulary (cmtlib/data/findings.py): which texts give which labels, that nothing
else gives one, that invisible characters are a space, and that docs/CONTRACTS.md publishes exactly
the vocabulary the code uses."""

from __future__ import annotations

from pathlib import Path

import pytest

from cmtlib.data import findings as F
from cmtlib.data.findings import BUILT_IN, normalise, parse_entries, vocabulary
from cmtlib.data.rules import normalise_text
from cmtlib.errors import ConfigError

CONTRACTS = Path(__file__).resolve().parents[1] / "docs" / "CONTRACTS.md"


@pytest.mark.parametrize("text, cls", [
    # the collections' own findings
    ("No Finding", "healthy"), ("No finding", "healthy"), ("normal", "healthy"), ("todo", "unknown"), ("", "unknown"),
    ("COVID-19", "covid"), ("COVID-19, ARDS", "covid"), ("Pneumonia/Viral/COVID-19", "covid"), ("SARS-CoV-2", "covid"),
    ("SARS", "other"), ("E.Coli", "other"), ("Mycoplasma Bacterial Pneumonia", "other"), ("Pleural_Thickening", "other"),
    ("Atelectasis|Cardiomegaly|Effusion", "other"), ("Pneumonia/Bacterial/Staphylococcus/MRSA", "other"),
    ("Tuberculosis (ActiveTuberculosis, ObsoletePulmonaryTuberculosis)", "other"), ("sick, not tuberculosis", "other"),
    ("Cardiomegaly|Edema (uncertain)|Support Devices", "other"), ("Edema (uncertain)", "unknown"), ("Support Devices", "unknown"),
    ("non-COVID", "not_covid"), ("Pneumonia, non-COVID", "other"), ("Pneumonia (lobar consolidation)", "other"),
    ("ＣＯＶＩＤ-19", "covid"), ("No\u200bfinding", "healthy"), ("No\u00a0Finding", "healthy"), ("\ufeffNormal", "healthy"),
    ("SARS-CoV2", "covid"), ("covid 19", "covid"), ("COVID19 pneumonia", "covid"), ("SARS-CoV", "other"), ("E.Coli", "other"),
    ("COVID-19?", "unknown"), ("Pulmonary oedema", "other"), ("Effusion|", "other"), ("Atelectasis||Mass", "other"),
    # given no label
    ("No\u00c2\u00a0finding", None), ("Nofinding", None), ("Pneumonía", None), ("Bronchiolitis", None), ("no pneumonia", None),
    ("Pneumonia negative", None), ("No Finding|Effusion", None), ("COVID-19, non-COVID", None), ("Viral", None), ("123", None),
    ("??!", None), ("normal heart, effusion", None), ("Pneumoniae", None), ("COVID-19|x", None), ("COVID-19 (PCR negative)", None),
    ("|", None), ("Viral/", None),
])
def test_a_text_gives_its_class_or_none(text, cls):
    verdict = BUILT_IN.classify(text)
    assert verdict.cls == cls
    assert bool(verdict.why) == (cls is None)


def test_labels_follow_the_design_table_and_pre2020():
    assert BUILT_IN.labels("No Finding") == ("1", "0", "0") and BUILT_IN.labels("Pneumonia") == ("0", "0", "1")
    assert BUILT_IN.labels("Bronchiolitis") == ("", "", "") and BUILT_IN.labels("Bronchiolitis", pre2020=True) == ("", "0", "")
    assert BUILT_IN.labels("non-COVID") == ("", "0", "")


def test_invisible_and_space_like_characters_become_a_space_never_nothing():
    assert normalise_text("No\u200bfinding") == "no finding" and normalise_text("a\u00adb\ufeffc") == "a b c"
    assert normalise_text("5\u200b7") == "5 7"  # two numbers stay two: not 57
    assert normalise("Pleural_Thickening") == "pleural thickening"


def test_the_user_adds_texts_and_they_win():
    v = vocabulary(["Bronchiolitis=other", "Sin hallazgos=healthy", "  Pneumonia = covid "])
    assert v.classify("Viral bronchiolitis").cls == "other"  # a disease text also counts inside a longer finding
    assert v.classify("sin  HALLAZGOS").cls == "healthy" and v.classify("Sin hallazgos, x").cls is None
    assert v.classify("Pneumonia").cls == "covid"
    assert BUILT_IN.classify("Bronchiolitis").cls is None  # the built-in vocabulary is untouched


@pytest.mark.parametrize("entry, message", [("Bronchiolitis", "write TEXT=CLASS"), ("=other", "write TEXT=CLASS"),
                                            ("Bronchiolitis=disease", "must be one of healthy, covid, other, unknown")])
def test_a_bad_entry_is_refused_saying_how_to_write_it(entry, message):
    with pytest.raises(ConfigError, match=message):
        parse_entries([entry])


def test_contracts_publish_the_vocabulary_the_code_uses():
    """docs/CONTRACTS.md's vocabulary table, row for row, from the code's sets (kept in step)."""
    def cell(words) -> str:
        return ", ".join("(blank)" if w == "" else f"`{w}`" for w in sorted(words))

    rows = [f"| whole text or part | {c} | {cell(t for t, k in F.PHRASES.items() if k == c)} |"
            for c in ("healthy", "unknown", "not_covid", "other")]
    rows += [f"| word inside a part | {c} | {cell(t for t, k in F.DISEASES.items() if k == c)} |" for c in ("covid", "other")]
    rows += [f"| part that adds nothing | - | {cell(F.QUALIFIERS)} |",
             f"| negation: the part gives no label | - | {cell(F.NEGATIONS)} |",
             f"| uncertainty: the part is unknown | - | {cell(F.UNCERTAIN)} |"]
    text = CONTRACTS.read_text()
    section = text[text.index("## Finding vocabulary"):]
    published = [line for line in section.splitlines() if line.startswith(("| whole text", "| word inside", "| part that",
                                                                           "| negation", "| uncertainty"))]
    assert published == rows
