"""Math self-correction: the environment (:mod:`.env`), its procedural problems (:mod:`.problems`) and dataset
loaders (:mod:`.datasets`: GSM8K, MATH, MATH-500, MetaMathQA)."""
