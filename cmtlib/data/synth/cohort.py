"""Who is in the synthetic data set: patients, their images, labels, views, days and which ground
truth each image carries. Everything here is metadata; pixels are made in render.py.

The cohort is drawn from one generator seeded by (seed, COHORT_TAG), so it does not depend on how
the images are later spread over worker processes. Which films carry a planted cue is drawn from one
generator per cue (seed, CUE_TAG, cue), so planting a cue changes nothing else of the cohort. The
external site (`make_external_cohort`) is a second cohort from its own generator, appended after
the first, so adding it changes none of the first films.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cmtlib.data.synth.ties import CUES, PLANTED, Strengths

COHORT_TAG = 0xC0407
CUE_TAG = 0xC0E5
EXTERNAL_TAG = 0xE7E2  # the external site's streams (cohort, films, cues)

# Image shares per class (the issue: ~40 % healthy, 35 % other disease, 25 % COVID-19).
CLASS_SHARES = {"healthy": 0.40, "other": 0.35, "covid": 0.25}

# Other diseases and their share among "other". Cardiomegaly is the one without a lung-field lesion.
OTHER_KINDS = {
    "consolidation": 0.25, "effusion": 0.20, "cardiomegaly": 0.15,
    "atelectasis": 0.15, "nodule": 0.13, "pneumothorax": 0.12,
}
FINDINGS = {
    "healthy": "No Finding",
    "covid": "COVID-19",
    "consolidation": "Pneumonia (lobar consolidation)",
    "effusion": "Pleural effusion",
    "cardiomegaly": "Cardiomegaly",
    "atelectasis": "Atelectasis",
    "nodule": "Nodule",
    "pneumothorax": "Pneumothorax",
}

# Images per patient (1..5): COVID patients are followed up most, as in ieee8023.
IMAGES_PER_PATIENT = {
    "healthy": [0.75, 0.20, 0.05, 0.0, 0.0],
    "other": [0.50, 0.30, 0.20, 0.0, 0.0],
    "covid": [0.25, 0.25, 0.20, 0.15, 0.15],
}
# How often a film is AP (portable), comes from synth-b (the noisier site) or carries its side
# marker, per label: ties.Strengths. Today's default: AP 25 / 50 / 65 % (healthy / other / COVID-19),
# synth-b 40 / 50 / 60 %, the marker on 85 % of every class: mild, realistic shortcuts.
SOURCES = ("synth-a", "synth-b")
# The third site: films held out by params/default.yaml as a collection no run trains on.
EXTERNAL_SOURCE = "synth-c"
EXTERNAL_PREFIX = "X"

# Ground-truth availability, drawn per image and independent of the label (DESIGN.md: pixel masks
# for every class alike), so mask presence tells the model nothing about the class.
P_LUNG_MASK = 0.70
# Among unhealthy images with a lung-field lesion; cardiomegaly never gets one (see __init__),
# so this is set a little above 1/3 to keep about a third of all unhealthy images annotated.
P_DISEASE_MASK = 0.38
# Early COVID days (0-3) are near-invisible; capped so they stay a hard minority (<= 15 %).
EARLY_DAYS = 3
EARLY_CAP = 0.11

LICENSE = "CC0 (synthetic)"


@dataclass
class Anatomy:
    """One patient's body, in fractions of the image side; images of a patient jitter around it."""

    mid: float            # midline x
    thorax_hw: float      # rib cage half-width at mid-lung
    mediast_hw: float     # upper mediastinum half-width
    lung_top: float       # apex y
    lung_base: float      # right costophrenic angle y (image left); the left one sits lower
    left_drop: float      # left hemidiaphragm below the right (the liver lifts the right)
    dome: float           # diaphragm dome height
    ctr: float            # cardiothoracic ratio on a PA film
    shoulder_y: float
    neck_hw: float
    habitus: float        # soft-tissue thickness factor
    breast: float         # breast shadow density (0 for men)
    knob: float           # aortic knob prominence (grows with age)
    vessel_template: int
    rib_shift: float      # phase of the rib pattern, so ribs do not sit at the same rows for all
    gastric_bubble: bool
    arms: bool


@dataclass
class Case:
    """One image: its manifest metadata, the ground truth it carries and what to draw."""

    index: int
    patient: str          # "P0001"
    visit: int            # 1-based image number within the patient
    day: int | None       # offset_days; None = unknown (healthy)
    label: str            # healthy | covid | other
    kind: str             # healthy | covid | one of OTHER_KINDS
    view: str             # PA | AP
    source: str
    sex: str
    age: int
    anatomy: Anatomy
    severity: float       # COVID: extent/density in 0..1 from the day; others: lesion size
    side: int             # lesion side: -1 image left (patient right), +1 image right, 0 both
    has_lung_mask: bool
    has_disease_mask: bool
    disease_seed: int     # lesion shape seed, shared by a patient's images so lesions persist
    stream: int = 0       # 0: the main cohort's random streams; EXTERNAL_TAG: the external site's
    cues: tuple[str, ...] = ()   # cues tied to the label that this film carries, decided here (CUES order)
    p_marker: float = 0.85       # P(the side marker is burned in), drawn when the film is rendered
    marker_tied: bool = False    # the marker is tied to the label (a cue to list and twin)
    opacity: float = 1.0         # scale of a COVID-19 opacity's density (synth_covid_opacity); the mask is unchanged

    @property
    def image_name(self) -> str:
        return f"{self.patient}-d{self.day:02d}" if self.day is not None else f"{self.patient}-v{self.visit}"

    @property
    def finding(self) -> str:
        if self.kind == "covid" and self.severity > 0.85:
            return "COVID-19, ARDS"
        return FINDINGS[self.kind]


def covid_severity(day: int, peak: float, onset: float) -> float:
    """Extent and density of COVID opacities on a given day: a sigmoid that is faint on days 0-3
    (about 0.05-0.25 of the peak), half-way near day 5 and near the peak from day 10 on."""
    return float(peak / (1.0 + np.exp(-(day - onset) / 1.7)))


def _anatomy(rng: np.random.Generator, sex: str, age: int) -> Anatomy:
    female = sex == "F"
    thorax = rng.normal(0.37, 0.02) * (0.96 if female else 1.0)
    return Anatomy(
        mid=0.5 + rng.normal(0, 0.008),
        thorax_hw=float(np.clip(thorax, 0.32, 0.42)),
        mediast_hw=float(np.clip(rng.normal(0.065, 0.006), 0.05, 0.08)),
        lung_top=float(np.clip(rng.normal(0.14, 0.015), 0.1, 0.18)),
        lung_base=float(np.clip(rng.normal(0.8, 0.03), 0.72, 0.87)),
        left_drop=float(rng.uniform(0.008, 0.03)),
        dome=float(rng.uniform(0.06, 0.095)),
        ctr=float(np.clip(rng.normal(0.44, 0.03), 0.37, 0.5)),
        shoulder_y=float(rng.normal(0.08, 0.015)),
        neck_hw=float(rng.uniform(0.1, 0.13)),
        habitus=float(rng.uniform(0.8, 1.3)),
        breast=float(rng.uniform(0.05, 0.18)) if female else 0.0,
        knob=float(np.clip((age - 30) / 60, 0, 1) * rng.uniform(0.5, 1.0)),
        vessel_template=int(rng.integers(0, 1 << 16)),
        rib_shift=float(rng.uniform(-0.25, 0.25)),
        gastric_bubble=bool(rng.random() < 0.7),
        arms=bool(rng.random() < 0.5),
    )


def _pick_class(counts: dict[str, int], n: int, rng: np.random.Generator) -> str:
    # Draw in proportion to what each class still lacks: random order, near-exact shares.
    need = np.array([max(CLASS_SHARES[c] * n - counts[c], 0.0) for c in CLASS_SHARES])
    if need.sum() <= 0:
        need = np.array(list(CLASS_SHARES.values()))
    return list(CLASS_SHARES)[int(rng.choice(len(need), p=need / need.sum()))]


def _covid_days(k: int, early_ok: bool, rng: np.random.Generator) -> list[int]:
    # The first film at admission; follow-ups every 2-6 days. Only a first film may be early.
    first = int(rng.integers(0, EARLY_DAYS + 1)) if early_ok and rng.random() < 0.35 else int(rng.integers(EARLY_DAYS + 1, 11))
    days = [first]
    for _ in range(k - 1):
        days.append(days[-1] + int(rng.integers(2, 7)))
    return days


def make_cohort(n: int, seed: int, strengths: Strengths | None = None) -> list[Case]:
    """The n cases (images) of the data set, in patient order; deterministic for (n, seed, strengths).

    A strength changes only which films carry its cue: every draw is made whatever its value.
    """
    strengths = strengths or Strengths()
    cases = _draw_cohort(np.random.default_rng([seed, COHORT_TAG]), n, strengths, "P", None)
    return _plant(cases, seed, strengths, stream=0)


def make_external_cohort(n: int, seed: int, strengths: Strengths | None = None) -> list[Case]:
    """The external site's n cases: patients X0001..., source synth-c, from their own streams.

    The same class shares, views and planted cues as the main cohort (a hospital with the same
    patients and practices); only the scanner differs (render.SOURCE_LOOK).
    """
    strengths = strengths or Strengths()
    cases = _draw_cohort(np.random.default_rng([seed, COHORT_TAG, EXTERNAL_TAG]), n, strengths, EXTERNAL_PREFIX, EXTERNAL_SOURCE)
    return _plant(cases, seed, strengths, stream=EXTERNAL_TAG)


def _plant(cases: list[Case], seed: int, strengths: Strengths, stream: int) -> list[Case]:
    """Record the tied cues each film carries. Planted cues are drawn per film from one generator per
    cue (one draw per film, in cohort order), so planting one changes nothing else."""
    tied = strengths.tied()
    carried: dict[int, list[str]] = {c.index: [] for c in cases}
    for k, cue in enumerate(CUES):
        if cue not in tied or cue not in PLANTED:
            continue
        rng = np.random.default_rng([seed, CUE_TAG, k, stream])
        for case, u in zip(cases, rng.random(len(cases))):
            if u < strengths.p(cue, case.label):
                carried[case.index].append(cue)
    for case in cases:
        own = []
        if "source" in tied and case.source == SOURCES[1]:
            own.append("source")
        if "view" in tied and case.view == "AP":
            own.append("view")
        case.cues = tuple(c for c in CUES if c in own or c in carried[case.index])
        case.p_marker = strengths.p("marker", case.label)
        case.marker_tied = "marker" in tied
        case.stream = stream
    return cases


def _draw_cohort(rng: np.random.Generator, n: int, strengths: Strengths, prefix: str, site: str | None) -> list[Case]:
    """Patients and their films (module docstring); `site` fixes the source (the draw is still made)."""
    counts = dict.fromkeys(CLASS_SHARES, 0)
    covid_target = CLASS_SHARES["covid"] * n
    early = 0
    cases: list[Case] = []
    p = 0
    while len(cases) < n:
        p += 1
        label = _pick_class(counts, n, rng)
        k = min(int(rng.choice(5, p=IMAGES_PER_PATIENT[label])) + 1, n - len(cases))
        kind = label if label != "other" else str(rng.choice(list(OTHER_KINDS), p=list(OTHER_KINDS.values())))
        sex = "M" if rng.random() < (0.58 if label == "covid" else 0.5) else "F"
        age_mu, age_sd = {"healthy": (45, 15), "other": (58, 17), "covid": (60, 14)}[label]
        age = int(np.clip(round(rng.normal(age_mu, age_sd)), 18, 92))
        anatomy = _anatomy(rng, sex, age)
        source = SOURCES[int(rng.random() < strengths.p("source", label))]
        source = site or source
        if label == "healthy":
            days: list[int | None] = [None] * k
        elif label == "covid":
            days = list(_covid_days(k, early + 1 <= EARLY_CAP * covid_target, rng))
            early += sum(d <= EARLY_DAYS for d in days)
        else:
            days = sorted({int(d) for d in rng.integers(0, 15, size=k)})
            while len(days) < k:  # distinct days keep image ids unique
                days.append(days[-1] + 1)
        # Lesion size for other diseases, COVID's peak and onset: per patient, so follow-ups agree.
        size = float(rng.uniform(0.45, 1.0))
        peak, onset = float(rng.uniform(0.75, 1.0)), float(rng.normal(5.0, 0.8))
        side = int(rng.choice([-1, 1]))
        if kind == "effusion" and rng.random() < 0.2:
            side = 0
        disease_seed = int(rng.integers(0, 1 << 31))
        if kind == "cardiomegaly":
            anatomy.ctr = float(rng.uniform(0.56, 0.66))
        for v, day in enumerate(days, start=1):
            severity = covid_severity(day, peak, onset) if kind == "covid" else size
            has_disease_mask = label != "healthy" and kind != "cardiomegaly" and rng.random() < P_DISEASE_MASK
            cases.append(Case(
                index=len(cases), patient=f"{prefix}{p:04d}", visit=v, day=day, label=label, kind=kind,
                view="AP" if rng.random() < strengths.p("view", label) else "PA", source=source, sex=sex, age=age,
                anatomy=anatomy, severity=severity, side=side,
                has_lung_mask=bool(rng.random() < P_LUNG_MASK), has_disease_mask=bool(has_disease_mask),
                disease_seed=disease_seed,  # one lesion per patient: follow-ups show it grow
            ))
        counts[label] += k
    return cases
