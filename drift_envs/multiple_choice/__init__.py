"""Multiple choice (GPQA-style): the environment (:mod:`.env`) and its problem sources (:mod:`.problems`)."""
