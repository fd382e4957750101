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
"""

from cmtlib.data.synth.build import make_synthetic

__all__ = ["make_synthetic"]
