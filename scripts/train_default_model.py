"""Train the bundled default model (engine/default_model) on this machine's Python sources.

    nice -n 10 .venv/bin/python scripts/train_default_model.py --until 03:20

See fim_lsp/training/trainer.py for the corpus, the FIM transformations and the schedule.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fim_lsp.training.trainer import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
