"""Multiple choice (GPQA-style): the environment (:mod:`.env`), the offline generator (:mod:`.problems`) and the
dataset loaders (:mod:`.datasets`)."""
