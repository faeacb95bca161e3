"""Named configurations: the paper's models and small ones that train in minutes on a CPU.

Each preset has `model` (arguments of `LanguageModel`) and `train` (the training
recipe: corpus, batching, optimizer, sparsity, schedule). The paper presets take
their values from the authors' commands (SELFISH_RNN.md section 6) and, where those
are silent, from the model's own paper (AWD-LSTM, ON-LSTM).
"""

import copy

_SNTASGD = {"optimizer": "sntasgd", "clip": 0.25, "wdecay": 1.2e-6, "nonmono": 5}

PRESETS = {
    "tiny_ptb": {
        "description": "2 x 128 Selfish LSTM, 3 short epochs of 200 steps: the quick start (about 2 minutes on a 2-core CPU).",
        "model": {"arch": "lstm", "emsize": 128, "nhid": 128, "nlayers": 2, "dropout": 0.2},
        "train": {"corpus": "ptb", "bptt": 35, "batch_size": 20, "lr": 20.0, "epochs": 3, "steps_per_epoch": 200,
                  "density": 0.33, "death_rate": 0.5, "seed": 1111, **_SNTASGD, "nonmono": 1},
    },
    "small_ptb": {
        "description": "2 x 200 Selfish LSTM for 10 full PTB epochs (about 5 minutes per epoch on a 2-core CPU).",
        "model": {"arch": "lstm", "emsize": 200, "nhid": 200, "nlayers": 2, "dropout": 0.2},
        "train": {"corpus": "ptb", "bptt": 35, "batch_size": 20, "lr": 20.0, "epochs": 10,
                  "density": 0.33, "death_rate": 0.5, "seed": 1111, **_SNTASGD, "nonmono": 2},
    },
    "lstm_ptb_2x1500": {
        "description": "The paper's stacked LSTM on PTB (test ppl 71.65 at density 0.33).",
        "model": {"arch": "lstm", "emsize": 1500, "nhid": 1500, "nlayers": 2, "dropout": 0.65},
        "train": {"corpus": "ptb", "bptt": 35, "batch_size": 20, "lr": 40.0, "epochs": 100,
                  "density": 0.33, "death_rate": 0.8, "seed": 1111, **_SNTASGD},
    },
    "rhn_ptb_830": {
        "description": "The paper's RHN on PTB: width 830, depth 10, tied, coupled gates (test ppl 60.35 at density 0.472).",
        "model": {"arch": "rhn", "emsize": 830, "nhid": 830, "nlayers": 1, "depth": 10, "tied": True, "couple": True,
                  "dropout": 0.65, "dropouth": 0.25, "dropouti": 0.65, "dropoute": 0.2},
        "train": {"corpus": "ptb", "bptt": 35, "batch_size": 20, "lr": 15.0, "epochs": 500,
                  "density": 0.472, "death_rate": 0.5, "seed": 42, **_SNTASGD},
    },
    "onlstm_ptb": {
        "description": "The paper's ON-LSTM on PTB: 3 layers, 1150 hidden, chunk 10, tied (test ppl 56.31 at density 0.45).",
        "model": {"arch": "onlstm", "emsize": 400, "nhid": 1150, "nlayers": 3, "chunk_size": 10, "tied": True,
                  "dropout": 0.45, "dropouth": 0.3, "dropouti": 0.5, "dropoute": 0.1, "wdrop": 0.45},
        "train": {"corpus": "ptb", "bptt": 70, "batch_size": 20, "lr": 15.0, "epochs": 1000,
                  "density": 0.45, "death_rate": 0.5, "seed": 141, **_SNTASGD},
    },
    "awd_lstm_wt2": {
        "description": "AWD-LSTM on WikiText-2 (the paper used AWD-LSTM-MoS, test ppl 63.05 at density 0.45; "
                       "mixture-of-softmaxes is not implemented, this is the plain AWD-LSTM of Merity et al.).",
        "model": {"arch": "awd_lstm", "emsize": 400, "nhid": 1150, "nlayers": 3, "tied": True,
                  "dropout": 0.4, "dropouth": 0.2, "dropouti": 0.65, "dropoute": 0.1, "wdrop": 0.5},
        "train": {"corpus": "wikitext-2", "bptt": 70, "batch_size": 80, "lr": 30.0, "epochs": 750,
                  "density": 0.45, "death_rate": 0.5, "seed": 1882, **_SNTASGD},
    },
}


def preset(name):
    """A deep copy of preset `name` (`{"description", "model", "train"}`)."""
    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}; use one of {sorted(PRESETS)}.")
    return copy.deepcopy(PRESETS[name])
