"""Run `fit` in a subprocess (the resume test kills it mid-run). Usage: train_worker.py WORKDIR EPOCHS RESUME SLEEP"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from components.config import EngineConfig, TrainConfig  # noqa: E402
from components.models import create_model  # noqa: E402
from components.training.classifier import fit  # noqa: E402
from tests.test_training import tiny_data  # noqa: E402

workdir, epochs, resume, pause = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1", float(sys.argv[4])
spec, train, val = tiny_data()
import torch  # noqa: E402

torch.manual_seed(3)
model = create_model("cnn", num_classes=spec.num_classes, in_channels=spec.in_channels, image_size=spec.image_size, widths=[8, 16])
res = fit(model, train, val, spec, TrainConfig(epochs=epochs, batch_size=16, patience=100, seed=3), EngineConfig(progress=False),
          workdir=workdir, resume=resume, on_epoch_end=lambda e, m: time.sleep(pause))  # fmt: skip
print("EPOCHS", res.epochs_run, flush=True)
