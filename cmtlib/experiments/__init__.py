"""The experiments layer: everything that trains models for a report or a study, above the engine
and below the report pages. Pages only read what these functions made.

    runs.py                    a run (or the prepared data) made on demand: what a notebook asks for
    graph.py                   task graphs (what waits for what), run on a Dask cluster or here
    cluster.py                 where a graph runs: a local cluster sized to the machine, a user's, or none
    study.py                   the study API: configurations x seeds, one task per run, analyses, resuming
    plan.py                    what each report page reads, and the experiments tasks of the report's graph
    baselines.py               the paper's deep baselines, trained beside a run at its setting
    embedding_classifiers.py   SVMs and random forest on CMTNet embeddings
    comparison.py              the comparison of the baselines page (and the CAM page's baselines)
    external.py                the run judged on held-out and external sets at its frozen threshold
    ablation.py                a list of configurations compared side by side (Table V): a study
    mitigation.py              shortcut mitigations judged on held-out folds: a study with an analysis per run
    audit.py                   the shortcut audit of a run (its checks, both verdicts, the twins' truth): page 8 and studies
    audit_calibration.py       `cmt audit-calibration`: the audit judged against twins on planted cues, a study
"""
