"""Training: the Trainer (trainer.py) and the language-model task (pretrain.py), starting from a trained model
(handover.py, freeze.py, finetune.py), resume (resume.py), the run folder (runfolder.py), stopping (stopping.py),
regularisers, data-parallel training, the files and lines a run writes (report.py), TensorBoard and fault
injection for tests."""
