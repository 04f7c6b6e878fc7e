"""Brain-decoding runs: simulate, fit, evaluate and reconstruct (the "runs" layer of :mod:`decodelab.neuro`).

The models (:mod:`decodelab.neuro.meg`, :mod:`decodelab.neuro.ridge`) never import the metrics;
these modules compose them with data (:mod:`decodelab.datasets`), metrics (:mod:`decodelab.eval`),
the training loop (:mod:`decodelab.train`) and the shipped generators (:mod:`decodelab.vision.pipeline`):

- :mod:`~decodelab.neuro.runs.meg_world`: image features of the embedded worlds and simulated
  THINGS-MEG written from them;
- :mod:`~decodelab.neuro.runs.meg`: loading the simulated (or real) epochs with their targets,
  the linear baseline, retrieval and time-resolved evaluation, reconstruction, figures;
- :mod:`~decodelab.neuro.runs.meg_task`: the ``meg`` training task of the one loop;
- :mod:`~decodelab.neuro.runs.meg_report`: reconstruction through ``fmnist-c2i`` and the figures;
- :mod:`~decodelab.neuro.runs.meg_experiment`: the steps behind ``decodelab neuro ...`` for MEG.

fMRI runs (NSD) sit next to them (``fmri.py``).
"""
