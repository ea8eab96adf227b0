"""The stage adapters, one module per component: config section + upstream artifacts -> one component call -> outputs.

Each module declares `stage(config) -> executor.Stage` (its named inputs, the
config it depends on, its outputs) and the `run(ctx)` the executor calls,
locally (pipeline.run) and in a Kubeflow step (pipeline.stage) alike. The DAG
that wires them is pipeline/dag.py. This package's __init__ imports nothing,
so a stage's code fingerprint (the import closure of its adapter module)
covers its own component only.
"""
