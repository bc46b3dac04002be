"""Issue #15: the paper's ablations on the synthetic studio (`make reproduce`).

The variants train as a Hydra multirun over ``experiment=ablation/<variant>`` (presets in
``configs/ablation_preset``); :func:`~pippo_lightning.reproduce.run.reproduce_report` then scores
every job on the same held-out subjects and writes results.json / results.md / figures.
"""
