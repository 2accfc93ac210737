"""Training: the LightningModule (``module.SurrogateModule``: loss, metrics, optimizers,
logging), its objectives (``losses``) and metrics (``metrics``), the normalisation statistics
that travel with a checkpoint (``normalizer``), and the fast step (``fast_step``,
``fast_step_lightning``, ``adam_update``: the optimizer step replayed as CUDA graphs).

Nothing is imported here: the data layer reads ``normalizer`` without loading Lightning.
"""
