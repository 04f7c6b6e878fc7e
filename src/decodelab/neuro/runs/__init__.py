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

- :mod:`~decodelab.neuro.runs.fmri`: the embedded two-stage fMRI pipeline on (simulated) NSD:
  ridge to the shipped tokenizer's latents and to the generator's condition, stage-2 images by
  partial token resampling, NSD metrics with a shuffled-pairing baseline;
- :mod:`~decodelab.neuro.runs.crosssubject`: in-context cross-subject decoding (K-sweep against
  ridge) and shapes-world brain captioning.
"""
