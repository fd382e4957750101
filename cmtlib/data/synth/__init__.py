"""Synthetic chest X-ray phantoms: the embedded default data set (`cmt data synth`, `make report`).

Frontal films drawn from a simple density model: body outline and shoulders, two lungs of varying
size and shape, heart and mediastinum (the heart magnified on AP films), diaphragm domes, posterior
and anterior ribs, clavicles, spine, scapulae, breast shadows, vessel markings; then blur, the
detector's exponential response and each source's contrast, gamma, edge enhancement, noise and
side marker. Classes (by image): ~40 % healthy, ~35 % other disease (lobar consolidation, pleural
effusion, cardiomegaly, atelectasis, nodule, pneumothorax), ~25 % COVID-19: bilateral, peripheral,
lower-zone patchy ground-glass opacities whose extent and density grow with offset_days (faint on
days 0-3, which are capped at 11 % of the COVID films).

Choices worth knowing (see cohort.py for the numbers):
- Patients have 1-5 films on different days (COVID most, healthy fewest); a patient keeps one
  anatomy and one lesion, so follow-ups show the same lesion and splits must be by patient.
- Ground truth is published for a random subset, independent of the label, so the per-label task
  switches get exercised: lung masks (pixel mask and the two lung boxes) for ~70 % of films;
  disease masks for ~1/3 of unhealthy films. Healthy films have `disease_boxes` = `[]` (known
  empty) and no mask file. Unhealthy films without one have both cells empty (unknown).
- Cardiomegaly has no lung-field lesion, so its disease mask is left unknown, never known-empty:
  an empty target would teach the disease segmenter "nothing here" on a film labelled unhealthy,
  and outlining the heart would make the disease mask mean two different things.
- The lung mask is the anatomical lung field minus the heart shadow (JSRT-style), the same for
  every class: effusion, consolidation and pneumothorax lie inside it rather than reshaping it,
  so the mask's shape does not give the label away.
- AP (portable) films are commoner in COVID (65 %) and other disease (50 %) than in healthy (25 %),
  and source `synth-b` sees a little more COVID, as in real collections: mild, realistic
  shortcuts for the shortcut audit to find. Each source burns its own side marker ("R" top left
  for synth-a, "L" top right for synth-b) into 85 % of its films, independently of the label.
  These ties are strengths (ties.py: the share of COVID-19 films carrying a cue minus the share of
  the others), params keys `synth_<cue>_strength`; the defaults are the numbers above, and
  params/phantoms/clean.yaml sets them all to 0.
- Planted cues (ties.py, cues.py): burned-in text, a film stored at half size, a collimation frame
  and lines and tubes, each absent by default and tied to the label by its own strength
  (params/phantoms/<cue>.yaml: 0.8). Whether a film carries one, and how it looks, come from the
  cue's own random streams: planting a cue changes nothing else of the film or the cohort.
- Truth beside the manifest (build.py, truth.py; format in docs/CONTRACTS.md): every film's full
  lung and lesion masks (truth/, truth.csv, whatever the manifest publishes), and twins (twins/,
  twins.csv): the same film without its lesion, or without one tied cue (for the view: drawn again
  in the other view; for the source: exposed with the other site's look). Twins are in no manifest,
  so no run trains on them.
- An external site (`external_n`): source `synth-c`, a scanner look outside both training sites',
  appended after the n films from its own streams (the n films and their split do not change);
  params/default.yaml holds it out for the External validation page.
"""

from cmtlib.data.synth.build import make_synthetic
from cmtlib.data.synth.ties import CUES, Strengths
from cmtlib.data.synth.truth import cue_strengths, read_truth, read_twins

__all__ = ["CUES", "Strengths", "cue_strengths", "make_synthetic", "read_truth", "read_twins"]
