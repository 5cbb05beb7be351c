"""What a decision means for the person screened, in the WHO's terms for CAD in TB screening.

WHO (consolidated guidelines, module 2: screening, 2021) recommends computer-aided detection
for reading chest X-rays in screening and triage of people aged 15 and over; a positive screen
is not a diagnosis and must be followed by a WHO-recommended diagnostic test.
"""

from __future__ import annotations

TB_SUSPECTED = (
    "Screen positive: abnormality suggestive of TB at this threshold. Refer for confirmatory "
    "testing with a WHO-recommended rapid diagnostic test (e.g. Xpert MTB/RIF Ultra) and "
    "clinical evaluation. This is a screening/triage result, not a diagnosis."
)
NOT_SUGGESTED = (
    "Screen negative: no abnormality suggestive of TB at this threshold. This does not rule "
    "out TB; people with TB symptoms should still be evaluated according to national "
    "guidelines."
)
SCOPE = (
    "WHO recommends CAD for screening and triage of people aged 15 years and older; the "
    "threshold should be calibrated for the population and setting it is used in."
)


def triage_text(tb_suspected: bool) -> str:
    return TB_SUSPECTED if tb_suspected else NOT_SUGGESTED
