"""The study around the engine: the original experiment's data, fine-tuning sets, leakage, replication.

Data flow: :mod:`.seedio` imports the original CSVs as logs and exports logs back (reading through
results/); :mod:`.finetune` builds training sets, :mod:`.leakage` checks them against the questions,
:mod:`.replicate` trains, runs and reports end to end.
Usage: ``import_seed(Path("Results-all-v2.csv"), Path("runs/seed-v2"))``
"""
