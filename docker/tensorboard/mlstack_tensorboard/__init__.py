"""mlstack's TensorBoard router.

Each user may read only some MLflow experiments, and stock TensorBoard has no notion of users:
it shows everything under its --logdir. So instead of one TensorBoard over the whole tb-logs
volume, the router serves one stock TensorBoard per *selection* of experiments
(/tensorboard/<id>/, /tensorboard/<id>,<id>/, /tensorboard/all/), each over a directory of
symlinks to the active runs of exactly those experiments. nginx decides who may open which
selection (it asks MLflow); the router never sees credentials.
"""
