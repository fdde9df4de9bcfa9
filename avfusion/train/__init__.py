"""Training: the experiment config (:mod:`.experiment`), optimiser and schedule (:mod:`.optim`),
checkpoints (:mod:`.checkpoint`) and the Accelerate loop (:mod:`.loop`)."""
