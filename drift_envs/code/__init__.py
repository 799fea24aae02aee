"""Code with test feedback: the environment (:mod:`.env`), its problems (:mod:`.problems`: built-in, HumanEval,
MBPP) and the sandbox that runs the model's programs (:mod:`.sandbox`)."""
