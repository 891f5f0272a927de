"""Vision-language pretraining data (spec data-and-eval §1.8): LXMERT-format records, LXMERT's answer
table and the text side of each objective (span prediction, denoising, QA, image-text matching,
grounded captioning, referring expressions, captioning).

:mod:`vlcli.tasks.pretrain` turns these into the ``pretrain`` task the engine trains.
"""
