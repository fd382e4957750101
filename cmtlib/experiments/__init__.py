"""The experiments layer: everything that trains models for a report or a study, above the engine
and below the report pages. Pages only read what these functions made.

    runs.py                    a run (or the prepared data) made on demand: what a notebook asks for
    plan.py                    what each report page reads; `prepare` makes it before the pages run
    baselines.py               the paper's deep baselines, trained beside a run at its setting
    embedding_classifiers.py   SVMs and random forest on CMTNet embeddings
    comparison.py              the comparison of the baselines page (and the CAM page's baselines)
    external.py                the run judged on held-out and external sets at its frozen threshold
    ablation.py                a list of configurations trained one after another (Table V)
    mitigation.py              shortcut mitigations judged on leave-one-collection-out folds
"""
