"""HumanEval infilling evaluation and the sandbox that runs its tests."""
