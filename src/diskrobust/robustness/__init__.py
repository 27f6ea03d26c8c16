"""Robustness evaluation: the sweep engine behind the `lumbar_disk_attack` bundle, in the order data flows.

    config       the sweep's settings (`SweepConfig`), validated; per-pixel budgets
    testset      the test patches as tensors, with a digest
    network      strict checkpoint loading, weight digest, the heads a network has
    units        the sweep as cached units of work (fingerprints, resume, event log)
    engine       computing the units: clean, IND attacks, OOD attacks (`run_robustness_sweep`)
    results      per-sample CSV, aggregate JSON, Markdown report, plots
    tensorboard  TensorBoard views of a sweep
    workflow     the attack bundle's wiring (`RobustnessEvaluation`)

Import from the submodules (`from diskrobust.robustness.engine import run_robustness_sweep`); this
package file imports nothing, so `import diskrobust.robustness.config` stays light.
"""
