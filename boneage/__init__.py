"""Bone age from hand radiographs.

The package follows a film's path, one stage per folder; a stage imports only from stages before it
(``tests/test_layout.py`` checks the rule):

``files`` (read a film, store results) -> ``prepare`` (is it a hand; the image the model sees) ->
``network`` (the model and its file) -> ``clinical`` (intervals, reference, heatmap) -> ``predict``
(one film or an archive to a bone age, a report) -> ``train`` (the training cache, the loop,
evaluation, calibration) -> ``serving`` (the HTTP endpoint) -> ``jobs`` (the Ray jobs, the DICOM
receiver) -> ``cli``. Below them all: ``errors``, ``configs``, ``devices``, ``logs``, ``progress``,
``raycluster``.
"""

__version__ = "0.1.0"
