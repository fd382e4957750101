"""How strongly each cue of the phantoms is tied to the label: one strength per cue.

A cue's strength is the share of COVID-19 films carrying it minus the share of the other films
(healthy and other disease together), in expectation; the same in train, validation and test,
since cues are drawn per film (or per patient) independently of the split.

Seven cues, in CUES order:

- source: the film comes from `synth-b`, the noisier, flatter site (its scanner look and its "L"
  marker). Drawn per patient.
- view: the film is AP (portable): shallower inspiration, magnified heart, flatter ribs.
- marker: the site's side marker is burned in (synth-a "R", synth-b "L").
- text, size, border, tubes: planted cues (params/phantoms/*.yaml): burned-in text ("ICU"), the film
  stored at half resolution, a collimation frame, lines and tubes (ECG leads, a central line, a
  nasogastric tube, a chest drain). Absent at strength 0; at s > 0 carried by (1 + s) / 2 of the
  COVID-19 films and (1 - s) / 2 of the others.

Today's phantoms tie source and view to the label with a gradient (healthy < other < COVID-19) and
draw the marker on 85 % of films whatever the label. Those are anchor points: `source` at 0.153 and
`view` at 0.283 (their expected strengths, rounded to three decimals; the defaults) give exactly
those probabilities, and `marker` at 0 gives 85 % for every class. Between 0 and an anchor the
probabilities move in a straight line from "nothing tied to the label" (source and view: half the
films; marker: 85 %) to the anchor; between the anchor and 1 from the anchor to "every COVID-19 film
and no other". The strength is linear in the probabilities, so along either line it equals the key
(within 0.0004 of it near the source and view anchors, where the anchor is rounded).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from cmtlib.errors import ConfigError

CUES = ("source", "view", "marker", "text", "size", "border", "tubes")
PLANTED = ("text", "size", "border", "tubes")
LABELS = ("healthy", "other", "covid")

# cue -> (anchor strength, today's P(cue | label) at the anchor, P(cue) for every label at strength 0)
ANCHORS = {
    "source": (0.153, {"healthy": 0.40, "other": 0.50, "covid": 0.60}, 0.5),
    "view": (0.283, {"healthy": 0.25, "other": 0.50, "covid": 0.65}, 0.5),
    "marker": (0.0, {"healthy": 0.85, "other": 0.85, "covid": 0.85}, 0.85),
}
EXTREME = {"healthy": 0.0, "other": 0.0, "covid": 1.0}  # strength 1: every COVID-19 film, no other


@dataclass(frozen=True)
class Strengths:
    """One strength in [0, 1] per cue (module docstring); the defaults are today's phantoms."""

    source: float = 0.153
    view: float = 0.283
    marker: float = 0.0
    text: float = 0.0
    size: float = 0.0
    border: float = 0.0
    tubes: float = 0.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ConfigError(f"synth_{f.name}_strength must be a number in [0, 1] (the share of COVID-19 films "
                                  f"carrying the cue minus the share of the others); got {value!r}")

    @classmethod
    def clean(cls) -> "Strengths":
        """Nothing tied to the label (params/phantoms/clean.yaml)."""
        return cls(**dict.fromkeys(CUES, 0.0))

    def as_dict(self) -> dict[str, float]:
        return asdict(self)

    def tied(self) -> tuple[str, ...]:
        """The cues tied to the label (strength > 0): listed in truth.csv's `cues`, given twins."""
        return tuple(c for c in CUES if getattr(self, c) > 0)

    def p(self, cue: str, label: str) -> float:
        """P(the film carries `cue` | label), label in healthy / other / covid."""
        s = float(getattr(self, cue))
        if cue in PLANTED:
            if s == 0:
                return 0.0
            return (1.0 + s) / 2 if label == "covid" else (1.0 - s) / 2
        anchor, today, flat = ANCHORS[cue]
        if s == anchor:
            return today[label]  # exactly today's probability: the default phantoms stay byte for byte
        if s < anchor:
            return flat + (s / anchor) * (today[label] - flat)
        return today[label] + ((s - anchor) / (1.0 - anchor)) * (EXTREME[label] - today[label])
