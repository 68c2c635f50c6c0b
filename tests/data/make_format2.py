"""Format-2 fixtures, written by bptt at commit 4a907f7 (the last to write format 2):
``python tests/data/make_format2.py OUT`` with that commit installed, then the two
OUT/format2_*.npz copied here. Later
releases write format 3: this script is kept to say how the files were made."""

import sys

import numpy as np

sys.path.insert(0, "tests")
from train_helpers import small_trainer

from bptt import backends
from bptt.train.checkpoint import load_checkpoint, save_checkpoint

NUMPY = backends.get_backend("numpy")
out = sys.argv[1]
# 1) one tanh layer, adam, as format 2 was written before architectures were recorded
t = small_trainer(NUMPY, out + "/tanh", optimizer="adam", lr_decay=0.9, lr_decay_every=2)
t.run(steps=5)
ck = load_checkpoint(out + "/tanh")
for key in ("layers", "cell"):
    del ck.config["train"][key]
for key in ("layers", "bidirectional", "nonlinearity"):
    del ck.config["model"][key]
save_checkpoint(out + "/format2_tanh_adam_step5.npz", ck)
# 2) two relu layers, rmsprop, a state above 1
r = small_trainer(
    NUMPY, out + "/relu", optimizer="rmsprop", cell="relu", layers=2, lr=0.02, init="xavier"
)
r.run(steps=5)
ck = load_checkpoint(out + "/relu")
print("relu max |h|", np.abs(ck.hidden).max(), ck.hidden.shape, sorted(ck.opt_state))
save_checkpoint(out + "/format2_relu2_rmsprop_step5.npz", ck)
